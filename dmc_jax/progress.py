"""Progress lines with rate and ETA for long loops (SHELL: prints). Used by the training
phases (``train.phases``), gym evaluation, dataset collection and ARS."""
import time


class Progress:
  """Prints ``name: done/total (pct) rate/s ETA`` lines. The rate is measured from the first
  update on, so it counts neither the compilation (the first chunk pays it) nor the steps a
  resumed phase restored; the first line says so instead of guessing.

  ``compiled_first=False`` (host loops that compile nothing: dataset collection, ARS) measures
  the rate from construction. ``quiet_for`` > 0 prints nothing until the loop has run that
  many seconds and then at most one line per ``quiet_for`` seconds, plus the last line (a
  short gym evaluation stays silent, a long one shows where it is)."""

  def __init__(self, name: str, total: int, *, compiled_first: bool = True,
               quiet_for: float = 0.0):
    self.name, self.total = name, total
    self.quiet_for = quiet_for
    now = time.time()
    self._start = now
    self._base = None if compiled_first else (now, 0)  # (time, done) the rate counts from
    self._printed = None  # time of the last printed line

  def status(self, done: int, now: float = None) -> str:
    """``done/total (pct) rate/s ETA s`` (or ``(first chunk, compiled)``), without printing."""
    now = time.time() if now is None else now
    pct = f"{done}/{self.total} ({100 * done / self.total:.0f}%)"
    if self._base is None or done <= self._base[1]:
      self._base = (now, done)
      return f"{pct} (first chunk, compiled)"
    t0, d0 = self._base
    rate = (done - d0) / max(now - t0, 1e-9)
    eta = (self.total - done) / rate if rate > 0 else float("inf")
    return f"{pct} {rate:.1f}/s ETA {eta:.0f}s"

  def update(self, done: int, extra: str = "") -> str:
    now = time.time()
    line = f"{self.name}: {self.status(done, now)} {extra}".rstrip()
    if self.quiet_for <= 0:
      show = True
    elif done >= self.total:
      show = self._printed is not None
    else:
      show = (now - (self._printed or self._start)) >= self.quiet_for
    if show:
      self._printed = now
      print(line, flush=True)
    return line
