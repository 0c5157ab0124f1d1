"""Tiny end-to-end runs on MetaWorld and gymnasium MuJoCo datasets (generated on the spot)."""
import json
import os
import tempfile

from absl.testing import absltest

from dmc_jax.train import loop
from dmc_jax.eval import report
from tests.test_configs import _load


class BenchmarkEndToEndTest(absltest.TestCase):

  def test_metaworld_pretrain_align_evaluate(self):
    c = _load("metaworld.py", "dp,plate-slide,medium,smoke")
    c.align.stages, c.align.eval_selections = ("rl",), ("first",)
    c.train.eval_every = 0
    with tempfile.TemporaryDirectory() as wd:
      r = loop.train_and_evaluate(c, wd)
      self.assertEqual(r["dataset"], "dmc_jax/metaworld/plate-slide/medium-v0")
      self.assertEqual(r["num_episodes"], 2)
      row = r["align"]["first"]
      for side in ("before", "after"):
        self.assertIn(row[side]["success_rate"], (0.0, 0.5, 1.0))
        self.assertGreaterEqual(row[side]["return_mean"], 0.0)
      text = report.write_report([report.load_run(wd)], os.path.join(wd, "report"))
      self.assertIn("| medium | plate-slide |", text)
      self.assertIn("success", text)

  def test_mujoco_generated_dataset_reports_a_normalised_score(self):
    c = _load("mujoco.py", "dp,hopper,random,smoke")
    c.align.stages, c.train.steps, c.train.eval_every, c.critic.steps = (), 20, 0, 20
    with tempfile.TemporaryDirectory() as wd:
      r = loop.train_and_evaluate(c, wd)
      self.assertEqual(r["dataset"], "dmc_jax/hopper/random-v0")
      self.assertAlmostEqual(r["normalized_score"],
                             100 * (r["return_mean"] + 20.272305) / (3234.3 + 20.272305))
      self.assertEqual(json.load(open(os.path.join(wd, "config.json")))["data"]["normalizer"],
                       "gaussian")

  def test_bad_metaworld_task_fails_before_any_work(self):
    c = _load("metaworld.py", "dp,button-pres,medium,smoke")
    with tempfile.TemporaryDirectory() as wd:
      with self.assertRaisesRegex(ValueError, r"config.data.dataset=.*unknown MetaWorld task "
                                              r"'button-pres'"):
        loop.train_and_evaluate(c, wd)
      self.assertEmpty(os.listdir(wd))


if __name__ == "__main__":
  absltest.main()
