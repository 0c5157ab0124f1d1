"""Damaged inputs are clear errors naming the file, raised before any work, and nothing in
the workdir (or the artifact) changes: a truncated or garbled Minari dataset file, metadata
of the wrong type, a model bundle or exported artifact with a missing or truncated file."""
import json
import os
import shutil
import tempfile
from unittest import mock

import jax
import numpy as np
from absl.testing import absltest

from configs import nav1d as nav1d_config
from dmc_jax.data import minari_io, nav1d_data
from dmc_jax.train import checkpoint, export, offline, workdir_lock


def _snapshot(root):
  """``{relative path: (size, bytes hash)}`` of every file under ``root``."""
  out = {}
  for d, _, names in os.walk(root):
    for n in names:
      p = os.path.join(d, n)
      with open(p, "rb") as f:
        out[os.path.relpath(p, root)] = (os.path.getsize(p), hash(f.read()))
  return out


class CorruptDatasetTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = self.tempdir()
    self.env = mock.patch.dict(os.environ, {"MINARI_DATASETS_PATH": self.root})
    self.env.start()
    self.addCleanup(self.env.stop)
    self.config = nav1d_config.get_config("dp,full,smoke")
    nav1d_data.ensure_dataset("full", task_seed=0, horizon=32, step_size=0.1,
                              num_episodes=self.config.data.num_episodes, seed=0)
    self.data = os.path.join(self.root, "dmc_jax", "nav1d", "full-v0", "data")

  def tempdir(self):
    d = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, d, True)
    return d

  def run_job(self, message):
    wd = self.tempdir()
    with open(os.path.join(wd, "note.txt"), "w") as f:  # a workdir with something in it
      f.write("mine")
    before = _snapshot(wd)
    with self.assertRaisesRegex(minari_io.DatasetFileError, message):
      offline.train_and_evaluate(self.config, wd)
    after = _snapshot(wd)
    after.pop(workdir_lock.LOCK_NAME)
    self.assertEqual(after, before)

  def test_truncated_hdf5(self):
    path = os.path.join(self.data, "main_data.hdf5")
    os.truncate(path, os.path.getsize(path) // 2)
    self.run_job(rf"{path} cannot be opened as HDF5 \(truncated or garbled")

  def test_garbled_hdf5(self):
    path = os.path.join(self.data, "main_data.hdf5")
    with open(path, "r+b") as f:  # the superblock survives, the data behind it does not
      f.seek(4096)
      f.write(np.random.default_rng(0).bytes(os.path.getsize(path) - 8192))
    self.run_job(r"(main_data.hdf5 cannot be opened|episodes cannot be read from "
                 rf"{self.data})")

  def test_metadata_of_the_wrong_type(self):
    path = os.path.join(self.data, "metadata.json")
    meta = json.load(open(path))
    meta["total_episodes"] = "many"
    json.dump(meta, open(path, "w"))
    self.run_job(rf"{path}: field 'total_episodes' is 'many' \(str\), expected int")

  def test_metadata_not_json(self):
    path = os.path.join(self.data, "metadata.json")
    with open(path, "r+") as f:
      f.truncate(10)
    self.run_job(rf"{path} cannot be read: not valid JSON")


class CorruptArtifactTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    c = nav1d_config.get_config("dp,full,smoke")
    c.diffusion.clip_x0 = 1.0
    c.align.stages = ()
    cls.workdir = os.path.join(cls.tmp, "job")
    os.makedirs(cls.workdir)
    with open(os.path.join(cls.workdir, "config.json"), "w") as f:
      f.write(c.to_json())
    bundle = jax.tree.map(np.asarray, export._bundle_target(c, 4, 1))
    checkpoint.save(os.path.join(cls.workdir, "model"), 100, bundle)
    cls.artifact = export.export(cls.workdir, os.path.join(cls.tmp, "artifact"))

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp)
    super().tearDownClass()

  def damaged(self):
    d = tempfile.mkdtemp(dir=self.tmp)
    shutil.rmtree(d)
    shutil.copytree(self.artifact, d)
    return d

  def check_load(self, art, error, message):
    before = _snapshot(art)
    with self.assertRaisesRegex(error, message):
      export.load(art)
    self.assertEqual(_snapshot(art), before)

  def test_intact_artifact_loads(self):
    self.assertEqual(export.load(self.artifact).obs_norm.shift.shape, (4,))

  def test_missing_params(self):
    art = self.damaged()
    shutil.rmtree(os.path.join(art, "params"))
    self.check_load(art, FileNotFoundError, rf"{art}/params is missing")

  def test_truncated_array_file(self):
    art = self.damaged()
    files = [os.path.join(d, n) for d, _, ns in os.walk(os.path.join(art, "params"))
             for n in ns if os.path.getsize(os.path.join(d, n)) > 200]
    for p in files:  # every sizeable file of the step cut in half
      os.truncate(p, os.path.getsize(p) // 2)
    self.check_load(art, checkpoint.CheckpointReadError,
                    rf"{art}/params/0 cannot be read .*nothing was changed")

  def test_truncated_artifact_json(self):
    art = self.damaged()
    os.truncate(os.path.join(art, "artifact.json"), 12)
    self.check_load(art, checkpoint.CheckpointReadError,
                    rf"{art}/artifact.json cannot be read")

  def test_missing_config(self):
    art = self.damaged()
    os.remove(os.path.join(art, "config.json"))
    self.check_load(art, FileNotFoundError, rf"{art}/config.json is missing")

  def test_truncated_model_bundle_in_workdir(self):
    wd = tempfile.mkdtemp(dir=self.tmp)
    shutil.rmtree(wd)
    shutil.copytree(self.workdir, wd)
    for d, _, ns in os.walk(os.path.join(wd, "model")):
      for n in ns:
        p = os.path.join(d, n)
        if os.path.getsize(p) > 200:
          os.truncate(p, os.path.getsize(p) // 2)
    before = _snapshot(wd)
    with self.assertRaisesRegex(checkpoint.CheckpointReadError, rf"{wd}/model/100 cannot be"):
      export.export(wd, os.path.join(self.tmp, "never"))
    self.assertEqual(_snapshot(wd), before)
    self.assertFalse(os.path.exists(os.path.join(self.tmp, "never")))


if __name__ == "__main__":
  absltest.main()
