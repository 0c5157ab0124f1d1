"""Minari datasets on disk <-> per-episode numpy dicts (SHELL).

Never touches the network: a dataset that is not local gives an error that says how to get it.
"""
import os
from typing import Optional

import minari
import numpy as np
from minari.data_collector import EpisodeBuffer

from dmc_jax import jsonfile
from dmc_jax.data import dataset_ids
from dmc_jax.data import episodes as ep_lib


def datasets_root() -> str:
  return os.environ.get("MINARI_DATASETS_PATH", os.path.join("~", ".minari", "datasets"))


def exists(dataset_id: str) -> bool:
  """A local dataset folder for ``dataset_id`` (a damaged one counts: opening it is then a
  clear error, not a silent regeneration over it)."""
  return _data_dir(dataset_id) is not None or dataset_id in minari.list_local_datasets()


def check_episode_count(dataset_id: str, num_episodes: int, command: str) -> None:
  """A local dataset the library generates on demand must hold the ``data.num_episodes`` the
  config asks for: one made by another run (a smoke test, another size) is an error, not
  silently trained on."""
  got = open_dataset(dataset_id).total_episodes
  if got != num_episodes:
    raise ValueError(
        f"local dataset {dataset_id!r} holds {got} episodes but the config asks for "
        f"data.num_episodes={num_episodes}; set data.num_episodes={got} to use it, or "
        f"regenerate it with `{command} --num_episodes={num_episodes} --overwrite`, or point "
        f"MINARI_DATASETS_PATH elsewhere")


def write_dataset(dataset_id: str, episodes: list, env, *, algorithm_name: str,
                  description: str, overwrite: bool = False, **metadata):
  """Writes per-episode dicts (:data:`~dmc_jax.data.episodes.FIELDS`) as a Minari dataset.

  ``env`` (a ``gym.Env``) gives the spaces and the env spec stored with the data. The
  episodes are validated against its spaces first.
  """
  ep_lib.validate_episodes(episodes, env.observation_space.shape, env.action_space.shape,
                           dataset_id)
  if exists(dataset_id):
    if not overwrite:
      raise FileExistsError(f"Minari dataset {dataset_id!r} already exists under "
                            f"{datasets_root()}; pass overwrite=True to replace it")
    minari.delete_dataset(dataset_id)
  buffers = [EpisodeBuffer(
      id=i, observations=np.asarray(ep["observations"], np.float32),
      actions=np.asarray(ep["actions"], np.float32),
      rewards=[float(r) for r in ep["rewards"]],
      terminations=[bool(d) for d in ep["terminations"]],
      truncations=[bool(d) for d in ep["truncations"]]) for i, ep in enumerate(episodes)]
  return minari.create_dataset_from_buffers(
      dataset_id, buffers, env=env, algorithm_name=algorithm_name, description=description,
      author="dmc_jax", author_email="dmc_jax@users.noreply.github.com", eval_env=env.spec,
      code_permalink="https://github.com/dmc-jax/dmc_jax", **metadata)


class DatasetFileError(ValueError):
  """A local dataset file that cannot be used (truncated, garbled, wrong metadata types)."""


# metadata.json fields Minari reads, and the types they must have.
_METADATA_TYPES = {"total_episodes": int, "total_steps": int, "observation_space": str,
                   "action_space": str, "data_format": str, "dataset_id": str}


def _data_dir(id_or_path: str) -> Optional[str]:
  if os.path.isdir(id_or_path):
    data = os.path.join(id_or_path, "data")
    return data if os.path.isdir(data) else id_or_path
  d = os.path.join(os.path.expanduser(datasets_root()), id_or_path, "data")
  return d if os.path.isdir(d) else None


def check_files(data_dir: str, name: str) -> None:
  """``metadata.json`` parses and has the types Minari needs; ``main_data.hdf5`` opens as
  HDF5. Otherwise a :class:`DatasetFileError` naming the file and what is wrong (instead of
  a traceback from inside h5py or Minari)."""
  meta_path = os.path.join(data_dir, "metadata.json")
  regenerate = f"regenerate or re-download dataset {name!r}"
  meta = jsonfile.read_object(meta_path, DatasetFileError, hint=regenerate,
                              missing="not a Minari dataset folder",
                              missing_error=DatasetFileError)
  for key, typ in _METADATA_TYPES.items():
    if key in meta and not (isinstance(meta[key], typ) and not isinstance(meta[key], bool)):
      raise DatasetFileError(f"{meta_path}: field {key!r} is {meta[key]!r} "
                             f"({type(meta[key]).__name__}), expected {typ.__name__}; "
                             f"{regenerate}")
  if meta.get("data_format", "hdf5") == "hdf5":
    import h5py
    h5_path = os.path.join(data_dir, "main_data.hdf5")
    if not os.path.exists(h5_path):
      raise DatasetFileError(f"{h5_path} is missing; {regenerate}")
    try:
      with h5py.File(h5_path, "r") as f:
        n = len(f.keys())
    except (OSError, RuntimeError, KeyError, ValueError) as e:
      raise DatasetFileError(f"{h5_path} cannot be opened as HDF5 (truncated or garbled: "
                             f"{e}); {regenerate}") from None
    if n != meta.get("total_episodes", n):
      raise DatasetFileError(f"{h5_path} holds {n} episodes but {meta_path} says "
                             f"{meta['total_episodes']}; {regenerate}")


def open_dataset(id_or_path: str) -> minari.MinariDataset:
  """Opens a local Minari dataset by id, or by the path of its folder (or its ``data/``),
  after :func:`check_files`."""
  data_dir = _data_dir(id_or_path)
  if data_dir is not None:
    check_files(data_dir, id_or_path)
  if os.path.isdir(id_or_path):
    return minari.MinariDataset(data_dir)
  try:
    return minari.load_dataset(id_or_path, download=False)
  except FileNotFoundError:
    local = minari.list_local_datasets()
    hint = dataset_ids.missing_hint(id_or_path)
    raise FileNotFoundError(
        f"Minari dataset {id_or_path!r} is not in MINARI_DATASETS_PATH={datasets_root()} "
        f"(local datasets: {sorted(local) or 'none'}); {hint}, or pass the path of a "
        f"dataset folder instead") from None


def load_episodes(id_or_path: str, obs_shape: Optional[tuple] = None,
                  act_shape: Optional[tuple] = None):
  """Loads and validates a dataset: returns ``(Episodes, dataset)``.

  The episodes are checked against the dataset's own spaces, and against ``obs_shape`` /
  ``act_shape`` when given (e.g. the environment's or a checkpoint's).
  """
  ds = open_dataset(id_or_path)
  obs_space, act_space = ds.observation_space, ds.action_space
  for what, space, want in (("observation", obs_space, obs_shape),
                            ("action", act_space, act_shape)):
    if not hasattr(space, "shape") or space.shape is None or space.dtype is None:
      raise ValueError(f"dataset {id_or_path!r}: its {what} space {space} is not a Box; "
                       "only Box spaces are supported")
    if want is not None and tuple(space.shape) != tuple(want):
      raise ValueError(f"dataset {id_or_path!r}: {what} space has shape {space.shape}, but "
                       f"the environment/model expects {tuple(want)}")
  try:
    eps = [{f: getattr(e, f) for f in ep_lib.FIELDS} for e in ds.iterate_episodes()]
  except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
    raise DatasetFileError(
        f"dataset {id_or_path!r}: its episodes cannot be read from {_data_dir(id_or_path)} "
        f"({type(e).__name__}: {e}); regenerate or re-download it") from None
  ep_lib.validate_episodes(eps, obs_space.shape, act_space.shape, repr(id_or_path))
  return ep_lib.stack_episodes(eps), ds
