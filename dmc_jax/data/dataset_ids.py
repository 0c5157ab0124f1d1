"""Dataset ids this library can make, and how to make each one. PURE (no I/O, no imports of
the generators).

The Minari reader (:mod:`dmc_jax.data.minari_io`) words its "not found" error from here and
the generators (:mod:`dmc_jax.data.gym_data`, :mod:`dmc_jax.data.nav1d_data`) name their
datasets from here, so neither imports the other.
"""
import re
from typing import NamedTuple, Optional

NAV1D_KINDS = ("partial", "full", "expert")
METAWORLD_QUALITIES = ("expert", "medium", "random")
MUJOCO_ENVS = ("hopper", "walker2d", "halfcheetah")
MUJOCO_QUALITIES = ("random", "ars")

_NAV1D = re.compile(r"^dmc_jax/nav1d/(?P<kind>[a-z]+)-v0$")
_MW = re.compile(r"^dmc_jax/metaworld/(?P<task>[a-z0-9-]+)/(?P<quality>[a-z]+)-v0$")
_MJ = re.compile(r"^dmc_jax/(?P<env>hopper|walker2d|halfcheetah)/(?P<quality>[a-z]+)-v0$")


class Generated(NamedTuple):
  """A dataset id of one of the library's generators."""
  family: str  # nav1d | metaworld | mujoco
  name: str  # Nav1D kind, MetaWorld task or MuJoCo env
  quality: str  # "" for Nav1D


def nav1d_id(kind: str) -> str:
  return f"dmc_jax/nav1d/{kind}-v0"


def metaworld_id(task: str, quality: str) -> str:
  return f"dmc_jax/metaworld/{task.removesuffix('-v3')}/{quality}-v0"


def mujoco_id(env: str, quality: str) -> str:
  return f"dmc_jax/{env}/{quality}-v0"


def parse(dataset_id: str) -> Optional[Generated]:
  """The generator family of ``dataset_id``, or None for any other id (published or a path)."""
  m = _NAV1D.match(dataset_id)
  if m:
    return Generated("nav1d", m["kind"], "")
  m = _MW.match(dataset_id)
  if m:
    return Generated("metaworld", m["task"], m["quality"])
  m = _MJ.match(dataset_id)
  if m:
    return Generated("mujoco", m["env"], m["quality"])
  return None


def make_command(dataset_id: str) -> Optional[str]:
  """The command that writes ``dataset_id`` on this machine, or None."""
  g = parse(dataset_id)
  if g is None:
    return None
  if g.family == "nav1d":
    return f"python -m launch.make_nav1d_data --kinds={g.name}"
  if g.family == "metaworld":
    return f"python -m launch.make_metaworld_data --tasks={g.name} --qualities={g.quality}"
  return f"python -m launch.make_mujoco_data --envs={g.name} --qualities={g.quality}"


def missing_hint(dataset_id: str) -> str:
  """How to get a dataset that is not local."""
  cmd = make_command(dataset_id)
  if cmd is not None:
    return f"generate it with `{cmd}`"
  return (f"download it once on a machine with network access with "
          f"`minari download {dataset_id}` and copy it there")
