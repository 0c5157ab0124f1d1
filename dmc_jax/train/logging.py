"""MetricWriter: JSON lines on process 0 (SHELL)."""
import json
import os
import time

import jax
import numpy as np


class MetricWriter:
  """Appends ``{"step": s, "time": t, **scalars}`` lines to ``workdir/metrics.jsonl``."""

  def __init__(self, workdir: str, filename: str = "metrics.jsonl"):
    self.path = os.path.join(workdir, filename)
    self.enabled = jax.process_index() == 0

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "time": time.time()}
    row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")

  def write_row(self, step: int, row: dict) -> None:
    """Appends a row of JSON values (strings allowed), e.g. a scheduler decision."""
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), "time": time.time(), **row}) + "\n")

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


class Progress:
  """Prints ``name: done/total (pct) rate/s ETA`` lines. The rate is measured from the first
  update on, so it counts neither the compilation (the first chunk pays it) nor the steps a
  resumed phase restored; the first line says so instead of guessing."""

  def __init__(self, name: str, total: int):
    self.name, self.total = name, total
    self._base = None  # (time, done) at the first update

  def update(self, done: int, extra: str = "") -> str:
    now = time.time()
    pct = f"{done}/{self.total} ({100 * done / self.total:.0f}%)"
    if self._base is None or done <= self._base[1]:
      self._base = (now, done)
      line = f"{self.name}: {pct} (first chunk, compiled) {extra}".rstrip()
    else:
      t0, d0 = self._base
      rate = (done - d0) / max(now - t0, 1e-9)
      eta = (self.total - done) / rate if rate > 0 else float("inf")
      line = f"{self.name}: {pct} {rate:.1f}/s ETA {eta:.0f}s {extra}".rstrip()
    print(line, flush=True)
    return line
