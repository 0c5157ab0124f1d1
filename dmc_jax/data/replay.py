"""A ring buffer of transitions for online fine-tuning. PURE: a dict of arrays in, a new
dict out, so it lives in a checkpoint and inside ``jit`` like any other state.

``init(capacity, obs_dim, act_dim)``; ``add(buf, rows, valid)`` writes the valid rows after
the last written one (wrapping around, oldest overwritten); ``sample(buf, key, n)`` draws
``n`` stored transitions uniformly with replacement.
"""
import jax
import jax.numpy as jnp

from dmc_jax.data import episodes as ep_lib

FIELDS = ("obs", "actions", "rewards", "next_obs", "dones")


def init(capacity: int, obs_dim: int, act_dim: int) -> dict:
  c = capacity
  return {"obs": jnp.zeros((c, obs_dim)), "actions": jnp.zeros((c, act_dim)),
          "rewards": jnp.zeros((c,)), "next_obs": jnp.zeros((c, obs_dim)),
          "dones": jnp.zeros((c,)), "ptr": jnp.zeros((), jnp.int32),
          "size": jnp.zeros((), jnp.int32)}


def capacity(buf) -> int:
  return buf["obs"].shape[0]


def add(buf: dict, rows: dict, valid) -> dict:
  """``rows``: ``{field: [n, ...]}`` for :data:`FIELDS`; ``valid [n]`` bool (invalid rows are
  dropped, the valid ones kept in order)."""
  cap = capacity(buf)
  idx = (buf["ptr"] + jnp.cumsum(valid) - 1) % cap
  idx = jnp.where(valid, idx, cap)  # out of range: dropped
  data = {k: buf[k].at[idx].set(rows[k], mode="drop") for k in FIELDS}
  added = jnp.sum(valid)
  return dict(data, ptr=(buf["ptr"] + added) % cap,
              size=jnp.minimum(buf["size"] + added, cap))


def sample(buf: dict, key, n: int) -> ep_lib.Transitions:
  """``n`` stored transitions drawn uniformly (an empty buffer gives its zero rows)."""
  j = jax.random.randint(key, (n,), 0, jnp.maximum(buf["size"], 1))
  return ep_lib.Transitions(buf["obs"][j], buf["actions"][j], buf["rewards"][j],
                            buf["next_obs"][j], buf["dones"][j])
