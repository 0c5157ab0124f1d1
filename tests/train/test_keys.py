"""The job's named PRNG streams (``dmc_jax.train.keys``) are distinct and fixed by the seed."""
import itertools

import jax
import numpy as np
from absl.testing import absltest

from dmc_jax.train import keys


def _data(k):
  return tuple(np.asarray(jax.random.key_data(k)).ravel().tolist())


class KeysTest(absltest.TestCase):

  def test_streams_are_distinct_and_deterministic(self):
    job = keys.job_keys(0)
    al = keys.align_keys(job.align)
    named = {f"job.{n}": k for n, k in job._asdict().items()}
    named.update({f"align.{n}": k for n, k in al._asdict().items()})
    named.update({f"eval.{i}": keys.eval_key(job, i)
                  for i in (keys.EVAL_FINAL, keys.EVAL_RANDOM, keys.EVAL_ALIGN)})
    named["cascade"] = jax.random.fold_in(job.align, keys.CASCADE)
    for (a, ka), (b, kb) in itertools.combinations(named.items(), 2):
      self.assertNotEqual(_data(ka), _data(kb), (a, b))
    self.assertEqual(_data(keys.job_keys(0).train), _data(job.train))
    self.assertNotEqual(_data(keys.job_keys(1).train), _data(job.train))

  def test_an_alignment_seed_redraws_the_optimisation_only(self):
    job = keys.job_keys(0)
    base = keys.align_keys(job.align)
    # seed 0 is the job's own alignment keys (every earlier run's numbers)
    for a, b in zip(keys.align_keys(job.align, 0), base):
      self.assertEqual(_data(a), _data(b))
    s1, s2 = keys.align_keys(job.align, 1), keys.align_keys(job.align, 2)
    for name in ("init", "update", "contexts", "online"):
      got = {_data(getattr(k, name)) for k in (base, s1, s2)}
      self.assertLen(got, 3, name)  # each seed its own draw
    for name in ("track", "curve"):  # measured on the same contexts and episode seeds
      self.assertEqual(_data(getattr(s1, name)), _data(getattr(base, name)), name)
    self.assertEqual(_data(keys.redraw_key(job.align, 0)), _data(job.align))
    self.assertNotEqual(_data(keys.redraw_key(job.align, 1)), _data(job.align))


if __name__ == "__main__":
  absltest.main()
