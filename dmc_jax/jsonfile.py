"""Reading a JSON object from a file with errors that name the file. PURE helper (file I/O
only, no library imports), shared by the dataset checks and the artifact loader."""
import json
import os


def read_object(path: str, error: type, *, missing: str, hint: str = "",
                missing_error: type = FileNotFoundError) -> dict:
  """The JSON object in ``path``. A missing file is ``missing_error`` ("PATH is missing:
  MISSING"); unparsable content or a non-object is ``error`` naming the file; ``hint`` (how to
  fix it) is appended to each message."""
  tail = f"; {hint}" if hint else ""
  if not os.path.exists(path):
    raise missing_error(f"{path} is missing: {missing}{tail}")
  try:
    with open(path) as f:
      out = json.load(f)
  except (OSError, ValueError) as e:
    raise error(f"{path} cannot be read: not valid JSON ({e}), truncated or garbled"
                f"{tail}") from None
  if not isinstance(out, dict):
    raise error(f"{path} holds a {type(out).__name__}, not a JSON object{tail}")
  return out
