"""Progress lines: the rate and ETA leave out the first chunk (compilation) and the steps a
resumed phase restored. TensorBoard events: the same scalars as ``metrics.jsonl``, readable by
TensorBoard's format (CRC-checked records), and no step twice after a rewind or a kill."""
import os
import struct
import tempfile
from unittest import mock

from absl.testing import absltest

from dmc_jax import progress as progress_lib
from dmc_jax.train import logging as logging_lib


class ProgressTest(absltest.TestCase):

  def test_rate_excludes_the_first_chunk_and_restored_steps(self):
    clock = iter([0.0, 130.0, 132.0, 134.0])  # built at 0; the first chunk ends at 130 s
    with mock.patch.object(progress_lib.time, "time", lambda: next(clock)):
      p = progress_lib.Progress("train dmc", 1000)
      first = p.update(400)  # resumed at 300, first chunk of 100 steps ends at 400
      second = p.update(500)  # 100 steps in 2 s
      third = p.update(600)
    self.assertEqual(first, "train dmc: 400/1000 (40%) (first chunk, compiled)")
    self.assertEqual(second, "train dmc: 500/1000 (50%) 50.0/s ETA 10s")
    self.assertEqual(third, "train dmc: 600/1000 (60%) 50.0/s ETA 8s")

  def test_host_loops_count_from_the_start_and_quiet_loops_print_late(self):
    clock = iter([100.0, 104.0, 106.0, 111.0, 112.0, 113.0])
    printed = []
    with mock.patch.object(progress_lib.time, "time", lambda: next(clock)), mock.patch(
        "builtins.print", lambda line, **_: printed.append(line)):
      p = progress_lib.Progress("collect", 10, compiled_first=False, quiet_for=5.0)
      p.update(2)   # 104: 4 s in, quiet
      p.update(3)   # 106: 6 s in: printed
      p.update(5)   # 111: 5 s after the last line: printed
      p.update(6)   # 112: quiet
      last = p.update(10)  # 113: the last line of a loop that printed
    self.assertEqual(printed, ["collect: 3/10 (30%) 0.5/s ETA 14s",
                               "collect: 5/10 (50%) 0.5/s ETA 11s", last])
    self.assertEqual(last, "collect: 10/10 (100%) 0.8/s ETA 0s")

  def test_status_is_the_line_without_printing(self):
    clock = iter([0.0, 10.0, 12.0])
    printed = []
    with mock.patch.object(progress_lib.time, "time", lambda: next(clock)), mock.patch(
        "builtins.print", lambda line, **_: printed.append(line)):
      p = progress_lib.Progress(("rl", 0), 100)
      self.assertEqual(p.status(20), "20/100 (20%) (first chunk, compiled)")
      self.assertEqual(p.status(40), "40/100 (40%) 10.0/s ETA 6s")
    self.assertEqual(printed, [])

  def test_a_short_quiet_loop_prints_nothing(self):
    clock = iter([0.0, 1.0, 2.0])  # built at 0
    printed = []
    with mock.patch.object(progress_lib.time, "time", lambda: next(clock)), mock.patch(
        "builtins.print", lambda line, **_: printed.append(line)):
      p = progress_lib.Progress("eval", 2, quiet_for=10.0)
      p.update(1)
      p.update(2)
    self.assertEqual(printed, [])


class TensorBoardTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    self.dir = tmp.name
    self.events = os.path.join(self.dir, logging_lib.TB_DIR, logging_lib.TB_FILE)

  def test_events_mirror_the_numeric_rows(self):
    w = logging_lib.MetricWriter(self.dir)
    w.write_scalars(0, {"a": 1.5, "b": 2})
    w.write_row(3, {"decision": "advance", "c": 4.0})  # the string is not a scalar
    w.write_scalars(5, {"a": -1.0})
    self.assertEqual(logging_lib.read_events(self.events),
                     [(0, "a", 1.5), (0, "b", 2.0), (3, "c", 4.0), (5, "a", -1.0)])
    # Another writer (a resumed run) rebuilds the same events from metrics.jsonl.
    logging_lib.MetricWriter(self.dir).write_scalars(6, {"a": 0.25})
    self.assertEqual(logging_lib.read_events(self.events)[-2:], [(5, "a", -1.0), (6, "a", 0.25)])
    self.assertLen(logging_lib.read_events(self.events), 5)
    # Only metrics.jsonl has a TensorBoard view.
    logging_lib.MetricWriter(self.dir, "decisions.jsonl").write_scalars(1, {"z": 1.0})
    self.assertLen(logging_lib.read_events(self.events), 5)

  def test_rewind_drops_the_events_of_dropped_rows(self):
    w = logging_lib.MetricWriter(self.dir)
    for step in range(5):
      w.write_scalars(step, {"loss": float(step)})
    w.rewind(lambda r: r["step"] <= 2)
    w.write_scalars(3, {"loss": 30.0})  # the resumed phase writes step 3 again
    self.assertEqual(logging_lib.read_events(self.events),
                     [(0, "loss", 0.0), (1, "loss", 1.0), (2, "loss", 2.0), (3, "loss", 30.0)])

  def test_a_kill_between_the_two_appends_is_repaired_on_restart(self):
    w = logging_lib.MetricWriter(self.dir)
    w.write_scalars(0, {"x": 1.0})
    with open(w.path, "a") as f:  # the row reached metrics.jsonl, its event did not
      f.write('{"step": 1, "time": 0.0, "x": 2.0}\n')
    logging_lib.MetricWriter(self.dir)
    self.assertEqual(logging_lib.read_events(self.events), [(0, "x", 1.0), (1, "x", 2.0)])

  def test_records_are_crc_checked(self):
    w = logging_lib.MetricWriter(self.dir)
    w.write_scalars(0, {"x": 1.0})
    data = bytearray(open(self.events, "rb").read())
    # The first record is the file-version event; its header is 8 bytes of length.
    (length,) = struct.unpack("Q", bytes(data[:8]))
    self.assertEqual(data[12:12 + length].find(b"brain.Event:2") >= 0, True)
    data[-6] ^= 0xFF  # a flipped byte in the last record's payload
    with open(self.events, "wb") as f:
      f.write(bytes(data))
    with self.assertRaisesRegex(ValueError, "CRC"):
      logging_lib.read_events(self.events)
    with open(self.events, "wb") as f:
      f.write(bytes(data[:-3]))  # cut inside the last record
    with self.assertRaisesRegex(ValueError, "truncated"):
      logging_lib.read_events(self.events)


if __name__ == "__main__":
  absltest.main()
