"""Every config loads, validates, and the main job runs end to end on its smoke variant."""
import glob
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest

from dmc_jax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(path, arg=None):
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


class ConfigTest(absltest.TestCase):

  def test_every_config_loads_and_validates(self):
    paths = [p for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
             if not p.endswith("__init__.py")]
    self.assertNotEmpty(paths)
    for p in paths:
      cfg = _load(p)
      self.assertIn("seed", cfg)
      loop.validate_config(cfg)

  def test_bad_values_name_the_key(self):
    cfg = _load(os.path.join(ROOT, "configs", "default.py"))
    cfg.diffusion.sample_steps = 500
    with self.assertRaisesRegex(ValueError, r"config.diffusion.sample_steps=500.*num_steps=50"):
      loop.validate_config(cfg)
    cfg = _load(os.path.join(ROOT, "configs", "default.py"))
    cfg.eval.samplers = ("ddim", "euler")
    with self.assertRaisesRegex(ValueError, r"config.eval.samplers"):
      loop.validate_config(cfg)
    with self.assertRaisesRegex(ValueError, "unknown config variant"):
      _load(os.path.join(ROOT, "configs", "default.py"), "nope")

  def test_main_job_smoke(self):
    with tempfile.TemporaryDirectory() as wd:
      subprocess.run([sys.executable, "-m", "launch.train", f"--workdir={wd}",
                      f"--config={os.path.join(ROOT, 'configs', 'default.py')}:smoke"],
                     cwd=ROOT, check=True, capture_output=True, timeout=600)
      results = json.load(open(os.path.join(wd, "results.json")))
      self.assertEqual(set(results), set(loop.SAMPLERS))
      rows = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
      self.assertTrue(any("train/diffusion/loss" in r for r in rows))
      self.assertTrue(os.path.exists(os.path.join(wd, "config.json")))


if __name__ == "__main__":
  absltest.main()
