"""The multi-process settings (``launch.train --coordinator_address/--num_processes/
--process_id`` or ``JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID``): flags win over
the environment, partial or out-of-range settings are a clear error before JAX starts, and one
process needs nothing. The two-process job itself: ``test_multihost``."""
import os
import unittest
from unittest import mock

from dmc_jax.train import distributed


class SettingsTest(unittest.TestCase):

  def test_flags_win_over_the_environment(self):
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
           "JAX_PROCESS_ID": "3"}
    with mock.patch.dict(os.environ, env):
      self.assertEqual(distributed.settings_from_env(),
                       {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                        "process_id": 3})
      self.assertEqual(distributed.settings_from_env(process_id=1)["process_id"], 1)

  def test_bad_settings_are_named(self):
    with mock.patch.dict(os.environ, {"JAX_NUM_PROCESSES": "two"}):
      with self.assertRaisesRegex(ValueError, "JAX_NUM_PROCESSES"):
        distributed.settings_from_env()
    check = distributed.check_settings
    with self.assertRaisesRegex(ValueError, r"without \['num_processes', 'process_id'\]"):
      check({"coordinator_address": "h:1", "num_processes": None, "process_id": None})
    with self.assertRaisesRegex(ValueError, "process_id must be in"):
      check({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2})
    with self.assertRaisesRegex(ValueError, "HOST:PORT"):
      check({"coordinator_address": "h", "num_processes": 2, "process_id": 0})
    with self.assertRaisesRegex(ValueError, "'off' or 'auto'"):
      distributed.initialize("on")

  def test_one_process_needs_nothing(self):
    clean = {k: v for k, v in os.environ.items() if k not in distributed.ENV.values()}
    with mock.patch.dict(os.environ, clean, clear=True), \
        mock.patch("jax.distributed.initialize") as init:
      self.assertFalse(distributed.initialize("off"))
      self.assertFalse(distributed.initialize("off", "h:1", 1, 0))
      init.assert_not_called()
    self.assertTrue(distributed.is_primary())
    distributed.barrier("one process: returns at once")


if __name__ == "__main__":
  unittest.main()
