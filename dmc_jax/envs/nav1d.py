"""Nav1D: the seed paper's 1-D navigation task, as pure JAX functions. PURE.

Position ``s in [-1, 1]``, action ``a in [-1, 1]``, deterministic dynamics
``s' = clip(s + step_size * a, -1, 1)``, fixed horizon ``H``. A sequence of normal
distributions ``N_t = N(mu_t, sigma_t)``, fixed by a task seed and the same in every episode,
defines the reward ``r(s_t, a_t) = exp(-(s_{t+1} - mu_{t+1})^2 / (2 sigma_{t+1}^2))``: the
density of ``N_{t+1}`` at ``s_{t+1}`` scaled so that its per-step maximum is 1.

Observation: ``[s, t / H, sin(2 pi t / H), cos(2 pi t / H)]``. Time is part of the state, so
the episode *terminates* (no bootstrapping) after ``H`` steps.

``reset(key, params)`` / ``step(key, state, action, params)`` are pure: vmap them over
episodes and jit the whole roll-out. The expert is optimal by dynamic programming on a grid
(:func:`solve_values`, :func:`greedy_action`).

Behaviour policies of the three datasets (see BUILD_NOTES.md):
  * ``full``: ``a ~ U[-1, 1]``, start ``~ U[-1, 1]``.
  * ``partial``: start ``~ U[-1, 0]``; ``a ~ U[lo(s), hi(s)]``, the actions that keep
    ``s'`` in ``[-1, 0]``: positions never leave the left half.
  * ``expert``: ``a = clip(a*(t, s) + N(0, noise^2))``, ``a*`` greedy on the DP values.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

OBS_DIM = 4
ACT_DIM = 1
DATASET_KINDS = ("partial", "full", "expert")
PARTIAL_REGION = (-1.0, 0.0)  # positions the partial behaviour policy stays in
EXPERT_NOISE = 0.1  # std of the expert's action noise


class Nav1DParams(NamedTuple):
  """Task parameters (a pytree; ``horizon = mu.shape[0] - 1`` is static)."""
  mu: jax.Array          # [H + 1] means of N_t (index t + 1 scores the step from t)
  sigma: jax.Array       # [H + 1] stds of N_t
  step_size: jax.Array   # scalar gamma
  start_low: jax.Array   # scalar: starts ~ U[start_low, start_high]
  start_high: jax.Array  # scalar

  @property
  def horizon(self) -> int:
    return self.mu.shape[0] - 1


class Nav1DState(NamedTuple):
  pos: jax.Array  # [] position
  t: jax.Array    # [] int32 time step


def make_params(task_seed: int = 0, horizon: int = 32, step_size: float = 0.1,
                start_low: float = -1.0, start_high: float = 1.0) -> Nav1DParams:
  """Draws the reward sequence from ``task_seed`` (numpy; call outside jit).

  ``mu_t`` is a random two-tone curve in ``[-0.85, 0.85]`` (so that tracking it needs
  anticipation: its slope exceeds ``step_size`` in places); ``sigma_t ~ U[0.1, 0.25]``.
  """
  if horizon < 1:
    raise ValueError(f"horizon must be >= 1, got {horizon}")
  if not step_size > 0:
    raise ValueError(f"step_size must be > 0, got {step_size}")
  if not -1.0 <= start_low <= start_high <= 1.0:
    raise ValueError(f"need -1 <= start_low <= start_high <= 1, got {start_low}, {start_high}")
  rng = np.random.default_rng(task_seed)
  u = np.arange(horizon + 1) / horizon
  a1, a2 = rng.uniform(0.4, 0.6), rng.uniform(0.1, 0.25)
  f2 = rng.integers(2, 4)
  p1, p2 = rng.uniform(0, 2 * np.pi, 2)
  mu = np.clip(a1 * np.sin(2 * np.pi * u + p1) + a2 * np.sin(2 * np.pi * f2 * u + p2),
               -0.85, 0.85)
  sigma = rng.uniform(0.1, 0.25, horizon + 1)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return Nav1DParams(f32(mu), f32(sigma), f32(step_size), f32(start_low), f32(start_high))


def dynamics(pos, action, step_size):
  """``s' = clip(s + step_size * clip(a, -1, 1), -1, 1)`` (broadcasts)."""
  return jnp.clip(pos + step_size * jnp.clip(action, -1.0, 1.0), -1.0, 1.0)


def reward(params: Nav1DParams, t, next_pos):
  """``exp(-(s' - mu_{t+1})^2 / (2 sigma_{t+1}^2))`` (max 1); ``t`` int, broadcasts."""
  z = (next_pos - params.mu[t + 1]) / params.sigma[t + 1]
  return jnp.exp(-0.5 * jnp.square(z))


def observe(state: Nav1DState, horizon: int):
  """``[s, t / H, sin(2 pi t / H), cos(2 pi t / H)]`` -> ``[4]`` (or ``[..., 4]``)."""
  phase = state.t.astype(jnp.float32) / horizon
  return jnp.stack([state.pos, phase, jnp.sin(2 * jnp.pi * phase),
                    jnp.cos(2 * jnp.pi * phase)], -1).astype(jnp.float32)


def reset(key, params: Nav1DParams):
  """Returns ``(state, obs [4])`` with the start drawn from ``U[start_low, start_high]``."""
  pos = jax.random.uniform(key, (), minval=params.start_low, maxval=params.start_high)
  state = Nav1DState(pos, jnp.zeros((), jnp.int32))
  return state, observe(state, params.horizon)


def step(key, state: Nav1DState, action, params: Nav1DParams):
  """One step: ``(state', obs' [4], reward [], done [])``. ``action`` is ``[1]`` or ``[]``.

  ``key`` is unused (the dynamics are deterministic) and kept for a uniform env API.
  """
  del key
  a = jnp.reshape(action, ())
  next_pos = dynamics(state.pos, a, params.step_size)
  r = reward(params, state.t, next_pos)
  new = Nav1DState(next_pos, state.t + 1)
  return new, observe(new, params.horizon), r, new.t >= params.horizon


# ----------------------------------------------------------------------------- the expert
def solve_values(params: Nav1DParams, num_states: int = 401, num_actions: int = 81):
  """Optimal values on a grid by backward induction: ``V [H + 1, num_states]``.

  ``V_H = 0``; ``V_t(s) = max_a r_t(s, a) + V_{t+1}(s')`` with ``V_{t+1}`` linearly
  interpolated at ``s'``. Pure; jit it for speed.
  """
  grid = jnp.linspace(-1.0, 1.0, num_states)
  acts = jnp.linspace(-1.0, 1.0, num_actions)
  nxt = dynamics(grid[:, None], acts[None, :], params.step_size)  # [S, A]

  def backward(v_next, t):
    q = reward(params, t, nxt) + jnp.interp(nxt, grid, v_next)
    v = jnp.max(q, axis=1)
    return v, v

  h = params.horizon
  _, vs = jax.lax.scan(backward, jnp.zeros(num_states), jnp.arange(h - 1, -1, -1))
  return jnp.concatenate([vs[::-1], jnp.zeros((1, num_states))], 0)


def optimal_return(values, pos):
  """The DP-optimal return from start ``pos`` at ``t = 0``: ``V_0(pos)`` (``values`` from
  :func:`solve_values`), linearly interpolated. Broadcasts over ``pos``."""
  return jnp.interp(pos, jnp.linspace(-1.0, 1.0, values.shape[1]), values[0])


def greedy_action(params: Nav1DParams, values, t, pos, num_actions: int = 201):
  """``argmax_a r_t(s, a) + V_{t+1}(s')`` over a fine action grid, at the exact ``pos``."""
  grid = jnp.linspace(-1.0, 1.0, values.shape[1])
  acts = jnp.linspace(-1.0, 1.0, num_actions)
  nxt = dynamics(pos, acts, params.step_size)
  q = reward(params, t, nxt) + jnp.interp(nxt, grid, values[t + 1])
  return acts[jnp.argmax(q)]


def _partial_bounds(pos, step_size):
  lo_s, hi_s = PARTIAL_REGION
  lo = jnp.clip((lo_s - pos) / step_size, -1.0, 1.0)
  hi = jnp.clip((hi_s - pos) / step_size, -1.0, 1.0)
  return lo, hi


def behaviour_action(key, kind: str, params: Nav1DParams, values, t, pos):
  """Samples the ``kind`` dataset's behaviour action (``[]``) at ``(t, pos)``."""
  if kind == "full":
    return jax.random.uniform(key, (), minval=-1.0, maxval=1.0)
  if kind == "partial":
    lo, hi = _partial_bounds(pos, params.step_size)
    return jax.random.uniform(key, (), minval=lo, maxval=hi)
  if kind == "expert":
    a = greedy_action(params, values, t, pos) + EXPERT_NOISE * jax.random.normal(key, ())
    return jnp.clip(a, -1.0, 1.0)
  raise ValueError(f"unknown Nav1D dataset kind {kind!r}; known: {DATASET_KINDS}")


def behaviour_density(kind: str, params: Nav1DParams, values, t, pos, action):
  """Density of ``action`` under the ``kind`` behaviour policy at ``(t, pos)``.

  ``expert``: the Gaussian density before clipping (the clip puts point masses at ±1, which
  this ignores). Broadcasting is not supported for ``expert``; vmap instead.
  """
  if kind == "full":
    inside = jnp.abs(action) <= 1.0
    return jnp.where(inside, 0.5, 0.0)
  if kind == "partial":
    lo, hi = _partial_bounds(pos, params.step_size)
    inside = (action >= lo) & (action <= hi)
    return jnp.where(inside, 1.0 / jnp.maximum(hi - lo, 1e-6), 0.0)
  if kind == "expert":
    z = (action - greedy_action(params, values, t, pos)) / EXPERT_NOISE
    return jnp.exp(-0.5 * z * z) / (EXPERT_NOISE * jnp.sqrt(2 * jnp.pi))
  raise ValueError(f"unknown Nav1D dataset kind {kind!r}; known: {DATASET_KINDS}")


def dataset_params(params: Nav1DParams, kind: str) -> Nav1DParams:
  """The env params the ``kind`` behaviour policy starts from (``partial`` starts left)."""
  if kind == "partial":
    return params._replace(start_low=jnp.float32(PARTIAL_REGION[0]),
                           start_high=jnp.float32(PARTIAL_REGION[1]))
  return params


def collect_episodes(key, params: Nav1DParams, kind: str, num_episodes: int, values=None):
  """Rolls out the ``kind`` behaviour policy: dict of numpy-ready arrays.

  Returns ``observations [N, H + 1, 4]``, ``actions [N, H, 1]``, ``rewards [N, H]``,
  ``terminations [N, H]`` (True at the last step), ``truncations [N, H]`` (all False).
  """
  if kind not in DATASET_KINDS:
    raise ValueError(f"unknown Nav1D dataset kind {kind!r}; known: {DATASET_KINDS}")
  if values is None:
    values = solve_values(params)
  env_params = dataset_params(params, kind)

  def episode(k):
    k_reset, k_act = jax.random.split(k)
    state, obs = reset(k_reset, env_params)

    def body(state, k_t):
      a = behaviour_action(k_t, kind, params, values, state.t, state.pos)
      new, obs, r, done = step(None, state, a, params)
      return new, (obs, a[None], r, done)

    _, (obs_seq, acts, rews, dones) = jax.lax.scan(
        body, state, jax.random.split(k_act, params.horizon))
    return obs, obs_seq, acts, rews, dones

  obs0, obs_seq, acts, rews, dones = jax.vmap(episode)(jax.random.split(key, num_episodes))
  return {"observations": jnp.concatenate([obs0[:, None], obs_seq], 1), "actions": acts,
          "rewards": rews, "terminations": dones, "truncations": jnp.zeros_like(dones)}


def plan_dynamics_error(params: Nav1DParams, obs, actions, next_obs):
  """``|T(s, a) - s'|`` on the position, for (unnormalised) planned transitions ``[..., 4]``."""
  pred = dynamics(obs[..., 0], actions[..., 0], params.step_size)
  return jnp.abs(pred - next_obs[..., 0])
