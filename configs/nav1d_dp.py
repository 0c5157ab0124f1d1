"""Nav1D, model `dp`: ``--config=configs/nav1d_dp.py:DATASET[,smoke]`` (partial | full | expert)."""
from configs import nav1d


def get_config(arg: str | None = None):
  parts, smoke = nav1d.parse_arg(arg)
  if len(parts) > 1:
    raise ValueError(f"config arg {arg!r}: expected DATASET[,smoke]")
  return nav1d.get_config(",".join(["dp"] + (parts or ["full"]) + (["smoke"] if smoke else [])))
