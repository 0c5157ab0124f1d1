"""A real subprocess killed with SIGKILL in each phase and resumed ends bit-for-bit equal."""
import os
import tempfile

from absl.testing import absltest

from dmc_jax.train import faults as fi

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "default.py") + ":smoke"


class ResumeTest(absltest.TestCase):

  def test_sigkill_in_critic_dmc_and_align_phases_then_resume(self):
    env = dict(os.environ)  # conftest points DMC_JAX_COMPILATION_CACHE at the tests' cache
    with tempfile.TemporaryDirectory() as root:
      ref, killed = os.path.join(root, "ref"), os.path.join(root, "killed")
      fi.run(fi.command(CONFIG, ref), env=env)
      cmd = fi.command(CONFIG, killed)
      # Killed mid-critic (after its second checkpoint), then mid-DMC (its first chunk logged,
      # not yet saved), then resumed to the end.
      self.assertTrue(fi.run_and_kill(cmd, after_line="train critic: 100/200", env=env))
      self.assertEqual(fi.corrupt_checkpoints(killed), 0)
      self.assertTrue(fi.run_and_kill(cmd, after_line="train dmc: 50/100", env=env))
      self.assertEqual(fi.corrupt_checkpoints(killed), 0)
      # Then mid-alignment: after the DPO stage's first chunk was decided.
      self.assertTrue(fi.run_and_kill(cmd, after_line="align dpo pass 0 chunk 1", env=env))
      self.assertEqual(fi.corrupt_checkpoints(killed), 0)
      out = fi.run(cmd, env=env)
      self.assertIn("resumed critic from step 200", out.stdout)
      result = fi.compare(ref, killed)
      self.assertEqual(result, {"metrics_equal": True, "params_equal": True,
                                "max_abs_diff": 0.0, "results_equal": True})
      # Re-running a finished job changes nothing.
      fi.run(cmd, env=env)
      self.assertTrue(fi.compare(ref, killed)["params_equal"])
      self.assertTrue(fi.compare(ref, killed)["metrics_equal"])


if __name__ == "__main__":
  absltest.main()
