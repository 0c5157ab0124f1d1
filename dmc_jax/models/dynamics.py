"""A learned dynamics model for the alignment reward's dynamics-consistency term. PURE.

Issue #14 asks the planners' alignment reward to subtract a dynamics-consistency penalty
"for planners that have a known or learned model". Nav1D has a known one
(:func:`dmc_jax.envs.nav1d.plan_dynamics_error`); every other task (MetaWorld, MuJoCo, any
Minari dataset) gets this one: an MLP ``f(s, a) -> s' - s`` on normalised transitions of the
offline dataset (:class:`~dmc_jax.networks.critic.MLP`, the critics' Dense-LayerNorm-mish
stack), fitted by Adam on the mean squared error, all steps one compiled ``lax.scan``. A
share of the transitions is held out, and the fit reports its error there against the
"nothing moves" baseline ``s' = s``, so a model that learned nothing is visible.

:func:`make_error_fn` turns the fitted model into ``dynamics_error(obs, act, next_obs)``
with the known model's signature: the L1 distance, in environment units and summed over
the observation dimensions, between the planned next state and the model's prediction.
On a task whose dynamics touch one dimension (Nav1D's position) this is the known model's
``|T(s, a) - s'|`` plus the learned model's own small error on the others, so one
``align.dynamics_coef`` means about the same with either.

Deterministic: the same key and data give the same parameters (the alignment phase fits it
again when it resumes instead of checkpointing it).
"""
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dmc_jax.data.episodes import Normalizer
from dmc_jax.networks.critic import MLP


class DynamicsFit(NamedTuple):
  params: dict
  net: MLP
  val_error: float  # held-out mean |f(s, a) + s - s'| per dimension, normalised units
  static_error: float  # the same for the prediction s' = s


def fit(key, obs, actions, next_obs, *, steps: int, batch_size: int = 256, lr: float = 1e-3,
        hidden: Sequence[int] = (256, 256), holdout: float = 0.1) -> DynamicsFit:
  """Fits ``f(s, a) ~ s' - s`` on normalised transitions ``obs [M, O]``, ``actions [M, A]``,
  ``next_obs [M, O]``; a share ``holdout`` (at least one transition) is kept out of the fit
  and scores it."""
  obs, actions, next_obs = (jnp.asarray(x, jnp.float32) for x in (obs, actions, next_obs))
  m = obs.shape[0]
  if m < 2:
    raise ValueError(f"a dynamics model needs at least 2 transitions, got {m}")
  k_perm, k_init, k_train = jax.random.split(key, 3)
  perm = jax.random.permutation(k_perm, m)
  n_val = min(max(1, int(round(holdout * m))), m - 1)
  val, tr = perm[:n_val], perm[n_val:]
  net = MLP(hidden_dims=tuple(hidden), out_dim=obs.shape[-1])
  x = jnp.concatenate([obs, actions], -1)
  delta = next_obs - obs
  params = net.init(k_init, x[:1])
  tx = optax.adam(lr)

  def loss_fn(p, idx):
    return jnp.mean((net.apply(p, x[idx]) - delta[idx]) ** 2)

  @jax.jit
  def run(params, opt):
    def body(carry, i):
      p, o = carry
      idx = tr[jax.random.randint(jax.random.fold_in(k_train, i), (batch_size,), 0,
                                  tr.shape[0])]
      loss, g = jax.value_and_grad(loss_fn)(p, idx)
      upd, o = tx.update(g, o, p)
      return (optax.apply_updates(p, upd), o), loss
    (params, _), losses = jax.lax.scan(body, (params, opt), jnp.arange(steps))
    err = jnp.mean(jnp.abs(net.apply(params, x[val]) - delta[val]))
    return params, losses, err, jnp.mean(jnp.abs(delta[val]))

  params, losses, err, static = run(params, tx.init(params))
  if not np.all(np.isfinite(np.asarray(losses))):
    raise FloatingPointError("the dynamics model's fit produced a non-finite loss")
  return DynamicsFit(params, net, float(err), float(static))


def make_error_fn(model: DynamicsFit, obs_norm: Normalizer, act_norm: Normalizer) -> Callable:
  """``dynamics_error(obs [..., O], act [..., A], next_obs [..., O]) -> [...]`` in
  environment units (the signature of the known model's): ``sum_d |s_d + f(s, a)_d -
  s'_d|`` with ``f`` applied in normalised units and its prediction taken back to
  environment units."""
  def error(obs, act, next_obs):
    s_n, a_n = obs_norm.normalize(obs), act_norm.normalize(act)
    pred = obs_norm.unnormalize(s_n + model.net.apply(model.params,
                                                      jnp.concatenate([s_n, a_n], -1)))
    return jnp.sum(jnp.abs(pred - next_obs), -1)
  return error
