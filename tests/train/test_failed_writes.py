"""A write that fails (disk full) stops the job with an error naming what failed, leaves the
previous checkpoint and every earlier file intact, and a re-run after the cause is gone
resumes to the same result as a run that never failed."""
import builtins
import errno
import os
import tempfile
from unittest import mock

import orbax.checkpoint as ocp
from absl.testing import absltest

from configs import nav1d as nav1d_config
from dmc_jax.train import checkpoint, faults, offline, phases


def _config():
  c = nav1d_config.get_config("dp,full,smoke")
  c.align.stages, c.align.eval_selections = ("rl",), ("first",)
  return c


def _disk_full(*args):
  raise OSError(errno.ENOSPC, "No space left on device")


class FailedWriteTest(absltest.TestCase):

  def test_failed_checkpoint_and_results_writes_then_resume(self):
    c = _config()
    with tempfile.TemporaryDirectory() as root:
      ref, wd = os.path.join(root, "ref"), os.path.join(root, "wd")
      offline.train_and_evaluate(c, ref)

      # 1. The DMC phase's last checkpoint (step 100) cannot be written.
      real_save = ocp.CheckpointManager.save

      def save(self, step, *args, **kw):
        if step == 100 and str(self.directory).endswith(os.path.join("checkpoints", "dmc")):
          _disk_full()
        return real_save(self, step, *args, **kw)

      with mock.patch.object(ocp.CheckpointManager, "save", save):
        with self.assertRaisesRegex(checkpoint.CheckpointWriteError,
                                    r"checkpoints/dmc/100 failed .*No space left on device.*"
                                    r"previous checkpoint \(step 50\) is intact"):
          offline.train_and_evaluate(c, wd)
      dmc_dir = os.path.join(wd, "checkpoints", "dmc")
      self.assertEqual(checkpoint.count_unreadable(dmc_dir), (1, 0))
      self.assertEqual(sorted(os.listdir(dmc_dir)), ["50"])  # no half-written step left
      self.assertEqual(checkpoint.count_unreadable(os.path.join(wd, "checkpoints", "critic")),
                       (3, 0))

      # 2. results.json cannot be written (after the models were saved).
      real_open = builtins.open

      def open_(path, mode="r", *args, **kw):
        if str(path).endswith("results.json.tmp") and "w" in mode:
          _disk_full()
        return real_open(path, mode, *args, **kw)

      before = {n: os.path.getsize(os.path.join(wd, n)) for n in ("config.json",)}
      with mock.patch.object(builtins, "open", open_):
        with self.assertRaisesRegex(phases.OutputWriteError,
                                    rf"writing {wd}/results.json failed .*No space left"):
          offline.train_and_evaluate(c, wd)
      self.assertFalse(os.path.exists(os.path.join(wd, "results.json")))
      self.assertFalse(os.path.exists(os.path.join(wd, "results.json.tmp")))
      self.assertEqual({n: os.path.getsize(os.path.join(wd, n)) for n in before}, before)
      self.assertEqual(checkpoint.count_unreadable(os.path.join(wd, "model")), (1, 0))

      # 3. The cause is gone: the same call resumes and ends as the run that never failed.
      offline.train_and_evaluate(c, wd)
      self.assertEqual(faults.compare(ref, wd), {"metrics_equal": True, "params_equal": True,
                                                 "max_abs_diff": 0.0, "results_equal": True})
      files = faults.compare_files(ref, wd)
      self.assertTrue(files and all(files.values()), files)


if __name__ == "__main__":
  absltest.main()
