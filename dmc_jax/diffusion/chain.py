"""The one ``lax.scan`` driver every sampler runs on. PURE.

A sampler is described by a Gaussian *transition*: at chain step ``k`` (``k = 0`` is the
noisiest), ``p(x_next | x_k) = N(mean, std^2 I)`` with ``(mean, std) = transition(params, x_k, k)``.
DDPM, DDIM, Euler–Maruyama on the reverse VP-SDE, the probability-flow ODE and flow-matching
Euler steps are all of this form (``std = 0`` for the deterministic ones). This module turns a
transition into a sampler once, so that log-probs, in-painting, chain recording and truncated
gradients are written (and tested) in one place.
"""
import dataclasses
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dmc_jax import distributions
from dmc_jax.types import Array, Params, PRNGKey

INPAINT_MODES = ("clean", "repaint")


class Inpaint(NamedTuple):
  """RePaint-style conditioning: entries where ``mask`` is True are imposed at every step.

  Attributes:
    mask: bool, broadcastable to ``x`` (e.g. ``[B, H, D]`` or ``[H, D]``).
    values: the imposed values, shape of ``x`` (entries outside ``mask`` are ignored).
  """
  mask: Array
  values: Array


class Chain(NamedTuple):
  """The recorded chain; leading axis is the chain step ``[S]`` (``S`` steps)."""
  t: Array         # [S] network time of x_t
  x_t: Array       # [S, B, ...] input of each step
  x_tm1: Array     # [S, B, ...] output of each step (after in-painting)
  mean: Array      # [S, B, ...] Gaussian transition mean
  std: Array       # [S] transition std (0 for deterministic steps)
  log_prob: Array  # [S, B] log N(x_tm1; mean, std^2) summed over the free entries


class SamplerOutput(NamedTuple):
  x_0: Array                 # [B, ...] final sample
  chain: Optional[Chain]     # None unless the sampler was built with return_chain=True


def transition_log_prob(x_tm1: Array, mean: Array, std: Array,
                        free: Optional[Array] = None) -> Array:
  """``log N(x_tm1; mean, std^2 I)`` summed over all but the batch axis -> ``[B]``.

  Entries where ``free`` is False (in-painted, hence deterministic) are left out. A step with
  ``std = 0`` is deterministic and gets log-prob 0 (its density is a point mass).
  """
  std = jnp.asarray(std, x_tm1.dtype)
  positive = std > 0
  safe_std = jnp.where(positive, std, 1.0)
  lp = distributions.normal_log_prob(x_tm1, mean, safe_std)
  if free is not None:
    lp = jnp.where(jnp.broadcast_to(free, lp.shape), lp, 0.0)
  lp = jnp.sum(lp.reshape(lp.shape[0], -1), axis=-1)
  return jnp.where(positive, lp, 0.0)


def check_options(num_steps: int, num_grad_steps: Optional[int], inpaint_mode: str) -> None:
  """Validates the chain options (called at sampler construction and again per run)."""
  if inpaint_mode not in INPAINT_MODES:
    raise ValueError(f"inpaint_mode must be one of {INPAINT_MODES}, got {inpaint_mode!r}")
  if num_grad_steps is not None and not 0 <= num_grad_steps <= num_steps:
    raise ValueError(
        f"num_grad_steps must be in [0, {num_steps}] (the number of sampling steps), "
        f"got {num_grad_steps}")


def _impose(x, inpaint, alpha, sigma, key, mode):
  if inpaint is None:
    return x
  values = jnp.broadcast_to(inpaint.values, x.shape).astype(x.dtype)
  if mode == "repaint":
    # Known entries follow the forward process at the output's noise level; at the end of
    # the chain that level is (alpha, sigma) = (1, 0), so they come out exact.
    values = alpha * values + sigma * jax.random.normal(key, x.shape, x.dtype)
  return jnp.where(inpaint.mask, values, x)


def run_chain(transition: Callable, params: Params, key: PRNGKey, x_T: Array, *,
              times: np.ndarray, levels: Optional[np.ndarray] = None,
              inpaint: Optional[Inpaint] = None, inpaint_mode: str = "clean",
              num_grad_steps: Optional[int] = None, remat: bool = True,
              return_chain: bool = False, start_step: int = 0,
              grad_weights: Optional[Array] = None) -> SamplerOutput:
  """Runs ``S = len(times)`` transitions as ``lax.scan``.

  Args:
    transition: ``(params, x_k [B, ...], k) -> (mean [B, ...], std scalar)``.
    params: model parameters (differentiated through the last ``num_grad_steps`` steps).
    key: PRNG key; split into one key per step.
    x_T: ``[B, ...]`` starting noise.
    times: static ``[S]`` network time of each step's input (recorded in the chain).
    levels: static ``[S + 1, 2]`` noise levels ``(alpha, sigma)``: row 0 is the level of
      ``x_T``, row ``k + 1`` the level of step ``k``'s output (the last row is ``(1, 0)``).
      Needed for ``inpaint_mode="repaint"``.
    inpaint: optional :class:`Inpaint`; masked entries equal ``values`` in the output exactly.
    inpaint_mode: "clean" imposes ``values`` at every step (Diffuser); "repaint" imposes the
      forward-noised ``values`` at each step's noise level (Lugmayr et al., 2022).
    num_grad_steps: ``K``. Gradients flow through the last ``K`` steps only; the first
      ``S - K`` run on ``stop_gradient(params)`` and their output is stopped too. ``None``
      means all steps (no truncation, no rematerialisation). ``K = 0`` gives zero gradient.
    remat: wrap the differentiable steps in ``jax.checkpoint``, so that backprop memory
      grows with ``K`` times the size of ``x`` rather than with the network's activations.
    return_chain: also return the :class:`Chain`.
    start_step: static; run steps ``start_step .. S - 1`` only, with ``x_T`` the input of step
      ``start_step`` (e.g. a latent ``z_t`` recorded in an earlier chain). The chain then has
      ``S - start_step`` rows. Truncation counts from the end as before.
    grad_weights: optional ``[S]`` weights on the gradient that reaches ``params`` through
      each step (per-step credit for back-propagation through the sampler): step ``k`` sees
      ``w_k p + stop_gradient((1 - w_k) p)``, the same value with a gradient scaled by ``w_k``.

  Returns:
    :class:`SamplerOutput`.
  """
  num_steps = len(times)
  check_options(num_steps, num_grad_steps, inpaint_mode)
  if not 0 <= start_step < num_steps:
    raise ValueError(f"start_step must be in [0, {num_steps - 1}], got {start_step}")
  if inpaint is not None and inpaint_mode == "repaint" and levels is None:
    raise ValueError("inpaint_mode='repaint' needs the sampler's noise levels")
  times_arr = jnp.asarray(np.asarray(times, np.float32))
  if levels is None:
    levels = np.tile([[1.0, 0.0]], (num_steps + 1, 1))
  levels = np.asarray(levels, np.float32)
  if levels.shape != (num_steps + 1, 2):
    raise ValueError(f"levels must have shape [{num_steps + 1}, 2], got {levels.shape}")
  levels_arr = jnp.asarray(levels)
  k_start, k_steps = jax.random.split(key)
  if inpaint is not None:
    # The start is imposed too: clean values, or values noised to the level of x_T.
    x_T = _impose(x_T, inpaint, levels_arr[start_step, 0], levels_arr[start_step, 1], k_start,
                  inpaint_mode)
  free = None if inpaint is None else jnp.logical_not(inpaint.mask)

  def step(p, x, xs):
    k, key_k = xs
    k_noise, k_paint = jax.random.split(key_k)
    if grad_weights is not None:
      w = jnp.asarray(grad_weights)[k]
      p = jax.tree.map(lambda a: w * a + jax.lax.stop_gradient((1.0 - w) * a), p)
    mean, std = transition(p, x, k)
    x_next = mean + std * jax.random.normal(k_noise, x.shape, x.dtype)
    x_next = _impose(x_next, inpaint, levels_arr[k + 1, 0], levels_arr[k + 1, 1],
                     k_paint, inpaint_mode)
    if not return_chain:
      return x_next, None
    lp = transition_log_prob(x_next, mean, std, free)
    rec = Chain(t=times_arr[k], x_t=x, x_tm1=x_next, mean=mean,
                std=jnp.asarray(std, x.dtype), log_prob=lp)
    return x_next, rec

  xs = (jnp.arange(num_steps), jax.random.split(k_steps, num_steps))
  k_split = num_steps if num_grad_steps is None else num_steps - num_grad_steps
  k_split = max(k_split, start_step)

  def segment(p, x, lo, hi, fn):
    sl = jax.tree.map(lambda a: a[lo:hi], xs)
    return jax.lax.scan(lambda c, s: fn(p, c, s), x, sl)

  if num_grad_steps is None:
    x, chain = segment(params, x_T, start_step, num_steps, step)
  else:
    chains = []
    x = x_T
    if k_split > start_step:
      # Frozen segment: stop the gradient at its inputs (params) and at its output, so that
      # neither the backward pass nor the residuals of these steps are ever built.
      x, c = segment(jax.lax.stop_gradient(params), x, start_step, k_split, step)
      x = jax.lax.stop_gradient(x)
      chains.append(jax.lax.stop_gradient(c))
    if k_split < num_steps:
      fn = jax.checkpoint(step) if remat else step
      x, c = segment(params, x, k_split, num_steps, fn)
      chains.append(c)
    chain = None if not return_chain else jax.tree.map(
        lambda *a: jnp.concatenate(a, axis=0), *chains)
  return SamplerOutput(x_0=x, chain=chain if return_chain else None)



@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity (a static jit argument)
class Sampler:
  """A sampler built from ``build_transition(cond, **kw) -> transition`` (static config).

  ``sampler(params, key, x_T, cond=None, inpaint=None, **kw) -> SamplerOutput`` is pure: jit,
  vmap or grad it at the call site. ``**kw`` are the sampler's traced knobs (``eta`` for DDIM,
  ``noise_scale`` for stochastic flow matching), defaulting to ``defaults``. Aligners use
  :meth:`step_log_prob` to re-evaluate a recorded transition under new parameters, and
  :meth:`replace` to change the chain options (truncation, recording) of the same sampler.
  """
  build_transition: Callable
  times: np.ndarray
  levels: Optional[np.ndarray]
  num_grad_steps: Optional[int] = None
  remat: bool = True
  return_chain: bool = False
  inpaint_mode: str = "clean"
  defaults: tuple = ()  # ((name, value), ...) default traced knobs
  min_std: float = 0.0  # floor on the std of the stochastic steps (std > 0); 0: none

  def __post_init__(self):
    check_options(len(self.times), self.num_grad_steps, self.inpaint_mode)
    if not self.min_std >= 0:
      raise ValueError(f"min_std must be >= 0, got {self.min_std}")

  @property
  def num_steps(self) -> int:
    return len(self.times)

  def _kw(self, kw):
    return {**dict(self.defaults), **kw}

  def _transition(self, cond, kw):
    """The transition with the knobs filled in and the std floored at ``min_std`` on the
    stochastic steps (deterministic steps stay deterministic), as DPPO does to keep every
    fine-tuned step's likelihood ratio well conditioned."""
    fn = self.build_transition(cond, **self._kw(kw))
    if not self.min_std:
      return fn

    def floored(params, x_t, k):
      mean, std = fn(params, x_t, k)
      std = jnp.asarray(std)
      return mean, jnp.where(std > 0, jnp.maximum(std, self.min_std), 0.0).astype(std.dtype)
    return floored

  def __call__(self, params, key, x_T, cond=None, inpaint=None, *, start_step: int = 0,
               grad_weights=None, **kw) -> SamplerOutput:
    return run_chain(self._transition(cond, kw), params, key, x_T,
                     times=self.times, levels=self.levels, inpaint=inpaint,
                     inpaint_mode=self.inpaint_mode, num_grad_steps=self.num_grad_steps,
                     remat=self.remat, return_chain=self.return_chain, start_step=start_step,
                     grad_weights=grad_weights)

  def replace(self, **changes) -> "Sampler":
    """The same sampler with other options (``num_grad_steps``, ``return_chain``, ...);
    ``defaults=dict(...)`` updates the default knobs."""
    if "defaults" in changes:
      changes["defaults"] = tuple(sorted({**dict(self.defaults),
                                          **dict(changes["defaults"])}.items()))
    return dataclasses.replace(self, **changes)

  def transition(self, params, x_t, k, cond=None, **kw):
    """``(mean, std)`` of chain step ``k`` (may be traced) at ``x_t [B, ...]``."""
    return self._transition(cond, kw)(params, x_t, k)

  def step_log_prob(self, params, x_t, x_tm1, k, cond=None, free=None, **kw):
    """``(log N(x_tm1; mean_params(x_t, k), std_k^2) [B], mean)``; the log-prob of a recorded
    step under ``params`` (0 for deterministic steps). ``free``: entries not in-painted."""
    mean, std = self.transition(params, x_t, k, cond, **kw)
    return transition_log_prob(x_tm1, mean, std, free), mean


def make_sampler(build_transition: Callable, *, times: np.ndarray,
                 levels: Optional[np.ndarray], num_grad_steps: Optional[int] = None,
                 remat: bool = True, return_chain: bool = False,
                 inpaint_mode: str = "clean", **defaults) -> Sampler:
  """Turns ``build_transition(cond, **kw) -> transition`` into a :class:`Sampler`."""
  return Sampler(build_transition, np.asarray(times), levels, num_grad_steps, remat,
                 return_chain, inpaint_mode, tuple(sorted(defaults.items())))


def batch_time(t, x: Array) -> Array:
  """Broadcasts a scalar network time to ``[B]``."""
  return jnp.full((x.shape[0],), t, jnp.float32)
