"""The launch scripts' compilation-cache setting: flag > environment > default; 'off'."""
import os
from unittest import mock

from absl.testing import absltest

from dmc_jax.train import compile_cache


class ResolveTest(absltest.TestCase):

  def test_precedence_and_off(self):
    with mock.patch.dict(os.environ, {compile_cache.ENV: "/tmp/from_env"}):
      self.assertEqual(compile_cache.resolve(None), "/tmp/from_env")
      self.assertEqual(compile_cache.resolve("/tmp/from_flag"), "/tmp/from_flag")
      self.assertIsNone(compile_cache.resolve("off"))
    with mock.patch.dict(os.environ, {compile_cache.ENV: "OFF"}):
      self.assertIsNone(compile_cache.resolve(None))
    env = {k: v for k, v in os.environ.items() if k != compile_cache.ENV}
    with mock.patch.dict(os.environ, env, clear=True):
      self.assertEqual(compile_cache.resolve(None),
                       os.path.expanduser(os.path.join("~", ".cache", "dmc_jax", "jax")))


if __name__ == "__main__":
  absltest.main()
