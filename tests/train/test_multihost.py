"""Two processes on localhost pretrain together (``jax.distributed``, CPU collectives over
gloo; issue #19): the critic and DMC chunks on the 4-device global mesh of 2 processes × 2
devices give the parameters of one process with 4 devices, and of one device, within float32
round-off; both processes hold the same replicated values."""
import os
import socket
import subprocess
import sys
import tempfile
import unittest

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "train", "multihost_worker.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_PLATFORMS"] = "cpu"
  return env


class MultiProcessPretrainTest(unittest.TestCase):

  def test_two_processes_equal_one(self):
    tmp = tempfile.mkdtemp(prefix="dmc_jax_multihost_")
    port = _free_port()
    outs = [os.path.join(tmp, f"p{i}.npz") for i in range(2)]
    procs = [subprocess.Popen([sys.executable, WORKER, str(i), "2", str(port), outs[i]],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for p, log in zip(procs, logs):
      self.assertEqual(p.returncode, 0, log[-3000:])
    single4 = os.path.join(tmp, "single4.npz")
    single1 = os.path.join(tmp, "single1.npz")
    for out, devices in ((single4, "4"), (single1, "1")):
      r = subprocess.run([sys.executable, WORKER, "0", "1", "0", out, devices], env=_env(),
                         capture_output=True, text=True, timeout=300)
      self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-3000:])
    p0, p1, s4, s1 = (np.load(f) for f in (outs[0], outs[1], single4, single1))
    self.assertEqual(sorted(p0.files), sorted(s1.files))
    self.assertTrue(any(k.startswith("dmc/") for k in p0.files))
    for k in p0.files:
      np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)  # one replicated value
      for ref in (s4, s1):
        np.testing.assert_allclose(p0[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)
    # Training moved the parameters far beyond the round-off between the runs.
    self.assertGreater(float(p0["moved"]), 1e-3)


if __name__ == "__main__":
  unittest.main()
