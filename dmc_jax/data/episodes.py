"""Offline data as arrays: validation, transitions, fixed-horizon segments, normalisation.

Validation and array building are numpy (run once, in the shell, before any work). The batch
samplers (:func:`sample_transitions`, :func:`sample_segments`) are PURE JAX functions of a key
and arrays already on device: jit them inside the train step.
"""
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

FIELDS = ("observations", "actions", "rewards", "terminations", "truncations")


class Episodes(NamedTuple):
  """Episodes padded to the longest one (``L`` steps).

  Attributes:
    observations: ``[N, L + 1, O]`` float32 (entries past ``lengths + 1`` are 0).
    actions: ``[N, L, A]`` float32.
    rewards: ``[N, L]`` float32.
    terminals: ``[N, L]`` bool: True at a step after which the episode *terminated* (no
      bootstrapping); truncation is not terminal.
    lengths: ``[N]`` int32 number of steps.
  """
  observations: np.ndarray
  actions: np.ndarray
  rewards: np.ndarray
  terminals: np.ndarray
  lengths: np.ndarray

  @property
  def obs_dim(self) -> int:
    return self.observations.shape[-1]

  @property
  def act_dim(self) -> int:
    return self.actions.shape[-1]

  def returns(self) -> np.ndarray:
    return self.rewards.sum(1)


def validate_episodes(episodes: Sequence[dict], obs_shape: tuple, act_shape: tuple,
                      name: str = "dataset") -> None:
  """Checks every field of every episode; raises ``ValueError`` naming the first problem.

  Args:
    episodes: per-episode dicts with the Minari fields (``observations [L + 1, *obs_shape]``,
      ``actions [L, *act_shape]``, ``rewards / terminations / truncations [L]``).
    obs_shape, act_shape: the environment's observation and action shapes.
    name: the dataset's name, for messages.
  """
  if len(episodes) == 0:
    raise ValueError(f"{name} is empty: it holds 0 episodes")
  obs_shape, act_shape = tuple(obs_shape), tuple(act_shape)
  for i, ep in enumerate(episodes):
    where = f"{name}: episode {i}"
    for f in FIELDS:
      if f not in ep or ep[f] is None:
        raise ValueError(f"{where} has no field {f!r} (needs {FIELDS})")
      if isinstance(ep[f], dict):
        raise ValueError(f"{where} field {f!r} is a dict; only Box observation/action spaces "
                         "are supported (flatten the dict first)")
    n = np.shape(ep["rewards"])
    if len(n) != 1 or n[0] == 0:
      raise ValueError(f"{where} field 'rewards' has shape {n}; expected (L,) with L >= 1")
    length = n[0]
    expected = {"observations": (length + 1,) + obs_shape, "actions": (length,) + act_shape,
                "rewards": (length,), "terminations": (length,), "truncations": (length,)}
    for f, shape in expected.items():
      arr = np.asarray(ep[f])
      if arr.dtype.kind not in "biuf":
        raise ValueError(f"{where} field {f!r} has dtype {arr.dtype}; expected a numeric dtype")
      if arr.shape != shape:
        what = {"observations": f"the environment's observation shape {obs_shape}",
                "actions": f"the environment's action shape {act_shape}"}.get(f, "L steps")
        raise ValueError(f"{where} field {f!r} has shape {arr.shape}; expected {shape} "
                         f"(L={length} steps and {what})")
      if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0].tolist()
        raise ValueError(f"{where} field {f!r} holds a non-finite value (NaN or inf) at "
                         f"index {bad}")


def stack_episodes(episodes: Sequence[dict]) -> Episodes:
  """Pads validated per-episode dicts into one :class:`Episodes`."""
  lengths = np.array([len(ep["rewards"]) for ep in episodes], np.int32)
  n, l_max = len(episodes), int(lengths.max())
  obs0 = np.asarray(episodes[0]["observations"])
  act0 = np.asarray(episodes[0]["actions"])
  obs = np.zeros((n, l_max + 1) + obs0.shape[1:], np.float32)
  act = np.zeros((n, l_max) + act0.shape[1:], np.float32)
  rew = np.zeros((n, l_max), np.float32)
  term = np.zeros((n, l_max), bool)
  for i, ep in enumerate(episodes):
    k = lengths[i]
    obs[i, :k + 1] = ep["observations"]
    act[i, :k] = ep["actions"]
    rew[i, :k] = ep["rewards"]
    term[i, :k] = np.asarray(ep["terminations"], bool)
  return Episodes(obs.reshape(n, l_max + 1, -1), act.reshape(n, l_max, -1), rew, term, lengths)


def episodes_from_arrays(arrays: dict) -> list:
  """Splits batched fixed-length arrays (``[N, L + 1, O]`` ...) into per-episode dicts."""
  n = np.shape(arrays["rewards"])[0]
  return [{f: np.asarray(arrays[f][i]) for f in FIELDS} for i in range(n)]


class Transitions(NamedTuple):
  """Flat transitions ``[M, ...]`` (critic and policy training)."""
  obs: np.ndarray
  actions: np.ndarray
  rewards: np.ndarray
  next_obs: np.ndarray
  dones: np.ndarray  # float32, 1 where the episode terminated after this step


def to_transitions(eps: Episodes) -> Transitions:
  valid = np.arange(eps.actions.shape[1])[None] < eps.lengths[:, None]
  return Transitions(eps.observations[:, :-1][valid], eps.actions[valid], eps.rewards[valid],
                     eps.observations[:, 1:][valid], eps.terminals[valid].astype(np.float32))


# ------------------------------------------------------------------------- normalisation
class Normalizer(NamedTuple):
  """``normalize(x) = (x - shift) / scale`` per feature (a pytree; stored with the model)."""
  shift: jax.Array
  scale: jax.Array

  def normalize(self, x):
    return (x - self.shift) / self.scale

  def unnormalize(self, x):
    return x * self.scale + self.shift


NORMALIZERS = ("minmax", "gaussian", "none")


def fit_normalizer(x: np.ndarray, kind: str = "minmax") -> Normalizer:
  """Fits on ``x [M, D]``: ``minmax`` maps the data range to ``[-1, 1]``; ``gaussian`` to zero
  mean and unit std; ``none`` is the identity. Constant features get scale 1."""
  x = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
  if kind == "minmax":
    lo, hi = x.min(0), x.max(0)
    shift, scale = (hi + lo) / 2, (hi - lo) / 2
  elif kind == "gaussian":
    shift, scale = x.mean(0), x.std(0)
  elif kind == "none":
    shift, scale = np.zeros(x.shape[1]), np.ones(x.shape[1])
  else:
    raise ValueError(f"unknown normalizer {kind!r}; known: {NORMALIZERS}")
  scale = np.where(scale > 1e-6, scale, 1.0)
  return Normalizer(jnp.asarray(shift, jnp.float32), jnp.asarray(scale, jnp.float32))


# ---------------------------------------------------------------------- device-side batches
class SegmentData(NamedTuple):
  """Episodes on device, padded by ``horizon`` so that every window is in range."""
  observations: jax.Array  # [N, L + 1 + horizon, O] (normalised)
  actions: jax.Array       # [N, L + horizon, A] (normalised)
  lengths: jax.Array       # [N]
  starts: jax.Array        # [M, 2] (episode, step) of every valid segment start


class Segment(NamedTuple):
  """A batch of windows. ``obs[:, 0]`` is the current observation, ``= history[:, -1]``."""
  history: jax.Array  # [B, K, O] observations t-K+1..t (repeats obs_0 before the start)
  obs: jax.Array      # [B, H, O] observations t..t+H-1
  actions: jax.Array  # [B, H, A] actions t..t+H-1
  mask: jax.Array     # [B, H] bool, True where t + j is a real step of the episode


def make_segment_data(eps: Episodes, horizon: int, obs_norm: Normalizer,
                      act_norm: Normalizer) -> SegmentData:
  """Normalises and pads ``eps`` for :func:`sample_segments` (numpy in, device arrays out)."""
  n = eps.observations.shape[0]
  obs = np.concatenate([np.asarray(obs_norm.normalize(eps.observations)),
                        np.zeros((n, horizon, eps.obs_dim), np.float32)], 1)
  act = np.concatenate([np.asarray(act_norm.normalize(eps.actions)),
                        np.zeros((n, horizon, eps.act_dim), np.float32)], 1)
  starts = np.array([(i, s) for i in range(n) for s in range(eps.lengths[i])], np.int32)
  return SegmentData(jnp.asarray(obs), jnp.asarray(act), jnp.asarray(eps.lengths),
                     jnp.asarray(starts))


def sample_segments(key, data: SegmentData, batch_size: int, horizon: int,
                    history: int = 1) -> Segment:
  """Uniform windows over all (episode, step) starts. PURE; ``batch_size``, ``horizon`` and
  ``history`` are static."""
  idx = jax.random.randint(key, (batch_size,), 0, data.starts.shape[0])
  ep, s = data.starts[idx, 0], data.starts[idx, 1]
  steps = s[:, None] + jnp.arange(horizon)[None]
  hist_steps = jnp.maximum(s[:, None] + jnp.arange(1 - history, 1)[None], 0)
  return Segment(history=data.observations[ep[:, None], hist_steps],
                 obs=data.observations[ep[:, None], steps],
                 actions=data.actions[ep[:, None], steps],
                 mask=steps < data.lengths[ep][:, None])


def sample_transitions(key, data: Transitions, batch_size: int) -> Transitions:
  """Uniform minibatch of transitions (arrays on device). PURE."""
  idx = jax.random.randint(key, (batch_size,), 0, data.obs.shape[0])
  return jax.tree.map(lambda x: x[idx], data)
