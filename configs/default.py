"""Default experiment of ``python -m launch.train``: Diffusion Policy on Nav1D ``full``.

Pretrains the IQL critic and the DMC on the dataset (generated with Minari if missing) and
evaluates with IDQL selection. ``:smoke`` runs in seconds (tests). Other experiments:
``configs/nav1d_{diffuser,dd,dp}.py:{partial,full,expert}`` and ``configs/mixture2d.py``.
"""
from configs import nav1d


def get_config(arg: str | None = None):
  parts, smoke = nav1d.parse_arg(arg)
  if parts:
    raise ValueError(f"unknown config variant {arg!r}; known: 'smoke'")
  return nav1d.get_config("dp,full" + (",smoke" if smoke else ""))
