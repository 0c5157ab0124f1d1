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


if __name__ == "__main__":
  absltest.main()
