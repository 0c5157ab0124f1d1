"""Progress lines: the rate and ETA leave out the first chunk (compilation) and the steps a
resumed phase restored."""
from unittest import mock

from absl.testing import absltest

from dmc_jax.train import logging as logging_lib


class ProgressTest(absltest.TestCase):

  def test_rate_excludes_the_first_chunk_and_restored_steps(self):
    clock = iter([130.0, 132.0, 134.0])  # the first chunk ends at 130 s (it compiled)
    with mock.patch.object(logging_lib.time, "time", lambda: next(clock)):
      p = logging_lib.Progress("train dmc", 1000)
      first = p.update(400)  # resumed at 300, first chunk of 100 steps ends at 400
      second = p.update(500)  # 100 steps in 2 s
      third = p.update(600)
    self.assertEqual(first, "train dmc: 400/1000 (40%) (first chunk, compiled)")
    self.assertEqual(second, "train dmc: 500/1000 (50%) 50.0/s ETA 10s")
    self.assertEqual(third, "train dmc: 600/1000 (60%) 50.0/s ETA 8s")


if __name__ == "__main__":
  absltest.main()
