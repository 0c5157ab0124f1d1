"""End to end on Nav1D: a tiny Diffusion Policy trained on `expert` clearly beats random."""
import json
import os
import tempfile

import ml_collections
import numpy as np
from absl.testing import absltest

from configs import nav1d as nav1d_config
from dmc_jax.data import nav1d_data
from dmc_jax.train import checkpoint, export, loop


class OfflineEndToEndTest(absltest.TestCase):

  def test_dp_on_expert_beats_random(self):
    c = nav1d_config.get_config("dp,expert,smoke")
    c.data.num_episodes = 200
    c.train.steps, c.train.log_every, c.train.eval_every, c.train.batch_size = 600, 200, 300, 128
    c.model.mlp_hidden, c.model.mlp_width = 64, 128
    c.eval.selection = "expectation"  # the DMC alone, no critic help
    c.eval.num_episodes = 16
    c.align.stages = ()  # pretraining only: `model/` is then the evaluated model
    with tempfile.TemporaryDirectory() as wd:
      r = loop.train_and_evaluate(c, wd)
      self.assertGreater(r["return_mean"], r["random_return"] + 8.0)
      self.assertGreater(r["return_mean"], 0.6 * r["dataset_return"])
      # A policy that imitates the expert puts its actions where the expert's density is high
      # (a uniform policy would score about 0.5 / 4 = 0.125 of the expert's peak 4.0).
      self.assertGreater(r["behaviour_density"], 1.0)
      self.assertEqual([s for s, _, _ in r["curve"]], [300, 600])
      # The saved model bundle reproduces the evaluation's normalisers and parameters.
      bundle = checkpoint.restore(os.path.join(wd, "model"), export._bundle_target(c, 4, 1))
      self.assertEqual(set(bundle), {"dmc", "critic", "obs_norm", "act_norm"})
      np.testing.assert_allclose(bundle["act_norm"]["scale"], 1.0, atol=1e-3)  # actions ±1
      # The exported artifact evaluates to the same numbers without the workdir.
      art = os.path.join(tempfile.mkdtemp(), "artifact")
      export.export(wd, art)
      saved = json.load(open(os.path.join(wd, "results.json")))
      self.assertAlmostEqual(saved["return_mean"], r["return_mean"])
      self.assertTrue(np.isfinite(saved["return_ci95"]))
    metrics = export.evaluate(art)
    self.assertEqual(metrics["return_mean"], r["return_mean"])
    self.assertEqual(metrics["behaviour_density"], r["behaviour_density"])
    with open(os.path.join(art, "config.json"), "w") as f:  # an artifact of another model
      f.write(nav1d_config.get_config("dd,expert,smoke").to_json())
    with self.assertRaisesRegex(checkpoint.CheckpointMismatchError, "does not match"):
      export.load(art)

  def test_minari_task_uses_the_gymnasium_loop(self):
    """task=minari: the env comes from the dataset's spec and runs in the vector-env loop."""
    nav1d_data.ensure_dataset("full", task_seed=0, horizon=32, step_size=0.1, num_episodes=50,
                              name="dmc_jax/nav1d/gymloop-v0")
    c = nav1d_config.get_config("dp,full,smoke")
    c.task, c.data.dataset = "minari", "dmc_jax/nav1d/gymloop-v0"
    c.train.steps, c.train.eval_every, c.eval.num_episodes = 50, 0, 4
    c.align.stages = ()  # the evaluation loop is under test (alignment on gym: test_benchmarks)
    with tempfile.TemporaryDirectory() as wd:
      r = loop.train_and_evaluate(c, wd)
    self.assertEqual(r["num_episodes"], 4)
    self.assertIsNone(r["random_return"])
    self.assertTrue(0.0 <= r["return_mean"] <= 32.0)

  def test_bad_config_fails_before_any_work(self):
    c = nav1d_config.get_config("diffuser,full,smoke")
    c.model.horizon = 7  # the U-Net halves the horizon once with dim_mults (1, 2): needs even
    with tempfile.TemporaryDirectory() as wd:
      with self.assertRaisesRegex(ValueError, r"config.model.horizon=7 is invalid.*multiple of 2"):
        loop.train_and_evaluate(c, wd)
      self.assertEmpty(os.listdir(wd))
    for key, value, pattern in (
        ("diffusion.sampler", "euler", r"config.diffusion.sampler='euler'.*one of"),
        ("data.dataset", "medium", r"config.data.dataset='medium'.*partial"),
        ("eval.selection", "best", r"config.eval.selection='best'"),
        ("model.max_known", 8, r"config.model.max_known=8.*\[1, model.horizon - 1 = 7\]"),
        ("critic.expectile", 1.5, r"config.critic.expectile=1.5"),
        ("diffusion.sample_steps", 50, r"sample_steps=50.*at most diffusion.train_steps=10"),
        ("train.lr", -1.0, r"config.train.lr=-1.0 is invalid: a positive number"),
        ("train.steps", "100", r"config.train.steps='100' has type str; expected int"),
        ("model.unet_attention", 1, r"config.model.unet_attention=1 has type int; expected "
                                    r"bool")):
      c = nav1d_config.get_config("diffuser,full,smoke").to_dict()
      group, name = key.split(".")
      c[group][name] = value  # a plain dict: ConfigDict itself refuses some type changes
      with self.assertRaisesRegex(ValueError, pattern):
        loop.validate_config(ml_collections.ConfigDict(c))
    c = nav1d_config.get_config("dp,full,smoke")
    with c.unlocked():
      c.model.widht = 3
    with self.assertRaisesRegex(ValueError, r"config.model.widht is not a known key"):
      loop.validate_config(c)


if __name__ == "__main__":
  absltest.main()
