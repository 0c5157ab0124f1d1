"""Online fine-tuning in a gymnasium env (``task=minari``): a real subprocess killed during
the alignment and resumed ends bit-for-bit equal to an uninterrupted run, buffer and critic
included, and the environment steps it consumed are reported.

The gym task is Nav1D's gymnasium face (``dmc_jax/Nav1D-v0``, the env spec stored in the
``dmc_jax/nav1d/full-v0`` dataset), so the test exercises the gymnasium path (vector env,
host loop, jitted policy) at the cost of the smallest env the library has."""
import json
import os
import tempfile

from absl.testing import absltest

from dmc_jax.data import nav1d_data
from dmc_jax.train import checkpoint
from dmc_jax.train import faults as fi

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "default.py") + ":smoke"
EPISODES, HORIZON, CHUNKS = 4, 32, 2
FLAGS = ["--config.task=minari", "--config.data.dataset=dmc_jax/nav1d/full-v0",
         "--config.env.max_steps=32", "--config.align.online.enabled=True",
         f"--config.align.online.episodes={EPISODES}", "--config.align.stages=('rl',)",
         "--config.align.eval_selections=('first',)"]


class GymOnlineTest(absltest.TestCase):

  def test_sigkill_during_gym_online_alignment_then_resume(self):
    # The smoke config's dataset (100 episodes), made once under the tests' MINARI path.
    nav1d_data.ensure_dataset("full", task_seed=0, horizon=HORIZON, step_size=0.1,
                              num_episodes=100, seed=0)
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as root:
      ref, killed = os.path.join(root, "ref"), os.path.join(root, "killed")
      fi.run(fi.command(CONFIG, ref, FLAGS), env=env)
      results = json.load(open(os.path.join(ref, "results.json")))
      # Every step of every online episode went to the buffer (Nav1D episodes run to H).
      self.assertEqual(results["online_env_steps"], CHUNKS * EPISODES * HORIZON)
      rows = [json.loads(line) for line in open(os.path.join(ref, "metrics.jsonl"))]
      self.assertEqual([r["align/rl/online_env_steps"] for r in rows
                        if "align/rl/online_env_steps" in r], [EPISODES * HORIZON] * CHUNKS)
      ck = checkpoint.Checkpointer(os.path.join(ref, "checkpoints", "align"))
      buf = ck.restore_untyped()["buffer"]
      ck.close()
      # Terminal transitions are stored (Nav1D ends at its horizon), the rest bootstrap.
      self.assertEqual(int(buf["size"]), CHUNKS * EPISODES * HORIZON)
      self.assertEqual(float(buf["dones"].sum()), CHUNKS * EPISODES)
      cmd = fi.command(CONFIG, killed, FLAGS)
      self.assertTrue(fi.run_and_kill(cmd, after_line="align rl pass 0 chunk 1", env=env))
      self.assertEqual(fi.corrupt_checkpoints(killed), 0)
      out = fi.run(cmd, env=env)
      self.assertIn("resumed", out.stdout)
      self.assertEqual(fi.compare(ref, killed), {"metrics_equal": True, "params_equal": True,
                                                 "max_abs_diff": 0.0, "results_equal": True})


if __name__ == "__main__":
  absltest.main()
