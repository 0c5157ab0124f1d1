"""MetricWriter: JSON lines, and the same scalars as TensorBoard events, on process 0 (SHELL).

The TensorBoard file (``workdir/tensorboard/events.out.tfevents.dmc_jax``, written with
tensorboardX's record framing and protobufs: no TensorFlow) is a *view* of ``metrics.jsonl``:
it is rebuilt from the JSON rows whenever a writer opens the workdir or rewinds it, and
appended to with every row after that. A resumed run therefore never shows a step twice
(the rewind that drops the rows a resumed phase writes again drops their events too), and a
kill between the two appends is repaired on the next start.
"""
import json
import os
import struct
import time

import jax
import numpy as np
from tensorboardX.proto import event_pb2, summary_pb2
from tensorboardX.record_writer import RecordWriter, masked_crc32c


TB_DIR = "tensorboard"
TB_FILE = "events.out.tfevents.dmc_jax"  # TensorBoard reads files whose name holds "tfevents"


def _events_of(row: dict) -> list:
  """The serialized TensorBoard events of one metrics row: its numeric values as scalars."""
  values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in row.items()
            if k not in ("step", "time") and isinstance(v, (int, float))
            and not isinstance(v, bool)]
  if not values:
    return []
  return [event_pb2.Event(wall_time=float(row.get("time", 0.0)), step=int(row["step"]),
                          summary=summary_pb2.Summary(value=values)).SerializeToString()]


class EventFile:
  """One TensorBoard event file, rebuilt atomically from rows and appended to after that."""

  def __init__(self, path: str):
    self.path = path
    self._writer = None

  def rebuild(self, rows) -> None:
    self.close()
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    tmp = self.path + ".tmp"
    writer = RecordWriter(tmp)
    writer.write(event_pb2.Event(wall_time=time.time(),
                                 file_version="brain.Event:2").SerializeToString())
    for row in rows:
      for event in _events_of(row):
        writer.write(event)
    writer.flush()
    os.replace(tmp, self.path)  # the open file now *is* the event file; appends follow
    self._writer = writer

  def append(self, row: dict) -> None:
    for event in _events_of(row):
      self._writer.write(event)
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def read_events(path: str) -> list:
  """``[(step, tag, value)]`` of a TensorBoard event file's scalars (no wall times), with
  every record's length and data CRC checked; a truncated last record is an error."""
  out = []
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    if pos + 12 > len(data):
      raise ValueError(f"{path}: truncated record header at byte {pos}")
    header = data[pos:pos + 8]
    (length,) = struct.unpack("Q", header)
    (crc,) = struct.unpack("I", data[pos + 8:pos + 12])
    body = data[pos + 12:pos + 12 + length]
    if crc != masked_crc32c(header) or len(body) != length or pos + 16 + length > len(data):
      raise ValueError(f"{path}: corrupt or truncated record at byte {pos}")
    (body_crc,) = struct.unpack("I", data[pos + 12 + length:pos + 16 + length])
    if body_crc != masked_crc32c(body):
      raise ValueError(f"{path}: data CRC mismatch in the record at byte {pos}")
    event = event_pb2.Event.FromString(body)
    out += [(int(event.step), v.tag, float(v.simple_value)) for v in event.summary.value]
    pos += 16 + length
  return out


class MetricWriter:
  """Appends ``{"step": s, "time": t, **scalars}`` lines to ``workdir/metrics.jsonl`` and,
  for ``metrics.jsonl`` with ``tensorboard=True``, the same scalars to the TensorBoard file
  under ``workdir/tensorboard/``."""

  def __init__(self, workdir: str, filename: str = "metrics.jsonl", tensorboard: bool = None):
    self.path = os.path.join(workdir, filename)
    self.enabled = jax.process_index() == 0
    if tensorboard is None:
      tensorboard = filename == "metrics.jsonl"
    self.events = EventFile(os.path.join(workdir, TB_DIR, TB_FILE)) if (
        tensorboard and self.enabled) else None
    if self.events is not None:
      self.events.rebuild(self.rows())

  def _append(self, row: dict) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self.events is not None:
      self.events.append(row)

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "time": time.time()}
    row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    self._append(row)

  def write_row(self, step: int, row: dict) -> None:
    """Appends a row of JSON values (strings allowed), e.g. a scheduler decision."""
    if not self.enabled:
      return
    self._append({"step": int(step), "time": time.time(), **row})

  def rows(self) -> list:
    """The complete rows written so far (a half-written last line is skipped)."""
    if not os.path.exists(self.path):
      return []
    out = []
    with open(self.path) as f:
      for line in f:
        try:
          out.append(json.loads(line))
        except json.JSONDecodeError:
          continue
    return out

  def rewind(self, keep) -> None:
    """Keeps the rows with ``keep(row)`` (a resumed run drops what it will write again);
    rewrites the file atomically."""
    if not self.enabled or not os.path.exists(self.path):
      return
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      for row in self.rows():
        if keep(row):
          f.write(json.dumps(row) + "\n")
    os.replace(tmp, self.path)
    if self.events is not None:
      self.events.rebuild(self.rows())
