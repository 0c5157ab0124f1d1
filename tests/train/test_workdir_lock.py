"""One live job per workdir: a second job stops at once naming the holder; a lock left by a
killed process is taken over."""
import os
import signal
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest

from configs import nav1d as nav1d_config
from dmc_jax.train import offline, workdir_lock

_HOLD = ("import sys, time; from dmc_jax.train import workdir_lock\n"
         "with workdir_lock.hold(sys.argv[1]):\n"
         "  print('held', flush=True); time.sleep(600)\n")


class WorkdirLockTest(absltest.TestCase):

  def test_second_job_stops_then_takes_over_after_a_kill(self):
    with tempfile.TemporaryDirectory() as wd:
      holder = subprocess.Popen([sys.executable, "-c", _HOLD, wd], stdout=subprocess.PIPE,
                                text=True)
      try:
        self.assertEqual(holder.stdout.readline().strip(), "held")
        c = nav1d_config.get_config("dp,full,smoke")
        t0 = time.time()
        with self.assertRaisesRegex(workdir_lock.WorkdirBusyError,
                                    rf"in use by another job \(pid {holder.pid} "):
          offline.train_and_evaluate(c, wd)
        self.assertLess(time.time() - t0, 30)  # at once: before any data or training
        self.assertEqual(sorted(os.listdir(wd)), [".lock"])  # nothing else written
      finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
      # The killed holder's lock file is still there, with its pid: taken over.
      self.assertTrue(open(os.path.join(wd, ".lock")).read().startswith(f"{holder.pid} "))
      with workdir_lock.hold(wd):
        self.assertTrue(open(os.path.join(wd, ".lock")).read().startswith(f"{os.getpid()} "))
        # Re-entering from the same process is refused too (one holder at a time).
        with self.assertRaises(workdir_lock.WorkdirBusyError):
          with workdir_lock.hold(wd):
            pass


if __name__ == "__main__":
  absltest.main()
