"""Test hooks of the job (passed in as an argument, never read from the config).

``train_and_evaluate(config, workdir, hooks=Hooks(...))``. The defaults do nothing; a
production run never sets them.
"""
import dataclasses
from typing import Callable, Optional


@dataclasses.dataclass(frozen=True)
class Hooks:
  # Alignment chunks (1-based) whose updates see NaN contexts: exercises the NaN guard and
  # the scheduler's rollback.
  nan_chunks: tuple = ()
  # Called with a name at every point where the job is about to write or has just written
  # a file (checkpoints, metrics, results); a test can kill the process there.
  boundary: Optional[Callable[[str], None]] = None

  def at(self, name: str) -> None:
    if self.boundary is not None:
      self.boundary(name)


NONE = Hooks()
