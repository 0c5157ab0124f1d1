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
      # The reference also lists the write boundaries it passes (the hook only prints).
      listed = fi.run(fi.command(CONFIG, ref), env=dict(env, **{fi.BOUNDARY_ENV: "list"})).stdout
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

      # Killed by itself at chosen write boundaries (the full sweep over every boundary is
      # `launch.fault_injection --mode=boundaries`): resumed, every output file is the same.
      names = [line.split(": ", 1)[1] for line in listed.splitlines()
               if line.startswith(fi.BOUNDARY_PREFIX)]
      self.assertContainsSubset({"critic:start", "dmc:before_checkpoint", "align:start",
                                 "align:reference_evaluated", "align:curve_evaluated",
                                 "results:json", "results:model"}, set(names))
      for name in ("align:reference_evaluated", "results:json"):
        n = names.index(name) + 1
        again = os.path.join(root, f"killed_at_{n}")
        cmd = fi.command(CONFIG, again)
        self.assertTrue(fi.run_and_kill(cmd, env=dict(env, **{fi.BOUNDARY_ENV: str(n)}),
                                        wait=True), name)
        fi.run(cmd, env=env)
        self.assertEqual(fi.compare(ref, again)["metrics_equal"], True, name)
        self.assertEqual(fi.compare(ref, again)["results_equal"], True, name)
        files = fi.compare_files(ref, again)
        self.assertTrue(files and all(files.values()), (name, files))


if __name__ == "__main__":
  absltest.main()
