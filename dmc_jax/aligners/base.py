"""What every aligner shares: LoRA state, per-sample randomness, sampling, rewards. PURE.

An aligner is ``Aligner(init, update)`` in the optax style:

* ``init(key, base_params) -> AlignState`` (LoRA adapters on the denoiser + optimiser state);
* ``update(state, base_params, critic_params, batch, key) -> (state, metrics)``, one
  compiled-ready step written *per device*: ``batch["hist"] [b, K, O]`` is this device's
  slice of the contexts and collectives run over ``axis_name`` (``None`` on one device).

The reference model is the base params as they are (adapters off); the aligned model is
``sampling.put(base, merge_lora(sampling.get(base), lora))``.

**Device-split invariance.** Every random draw inside an update (sampling noise, DPO/SFT
noise levels) comes from ``fold_in(key, global_sample_index)`` and runs per sample under
``vmap`` (which batches the network calls back together), and every statistic over the batch
(advantage normalisation, SFT quantiles and top-k) is taken over the whole batch with
collectives. So one device with the whole batch and ``n`` devices with ``1/n`` of it compute
the same update (tested), under ``pmap`` and under ``shard_map``.

**Gradients.** ``value_and_grad`` of ``pmean(local_loss)`` is followed by a ``pmean`` of the
gradient. Under ``shard_map`` with ``check_vma=True`` the gradient of a replicated (invariant)
input already comes back summed over the axis, so the outer ``pmean`` is the identity; under
``pmap`` (and ``shard_map`` with ``check_vma=False``, which ``train/sharding.py`` uses, see
BUILD_NOTES.md) it comes back per device and the outer ``pmean`` averages it. The pmap habit
``pmean(grad(local_loss))`` alone would be ``n`` times too large under checked ``shard_map``.
"""
from typing import Any, Callable, NamedTuple, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from dmc_jax.aligners import rewards
from dmc_jax.diffusion.chain import Chain, Inpaint
from dmc_jax.finite import all_finite, keep_if_finite
from dmc_jax.networks import lora as lora_lib


class Aligner(NamedTuple):
  init: Callable    # (key, base_params) -> AlignState
  update: Callable  # (state, base_params, critic_params, batch, key) -> (state, metrics)


@flax.struct.dataclass
class AlignState:
  step: jax.Array   # int32 scalar: updates applied (skipped non-finite ones included)
  params: Any       # trainable pytree (LoRA adapters; the cascade adds its adapter network)
  opt_state: Any    # optax state with an injected ``learning_rate`` hyper-parameter


def make_optimizer(lr: float, clip_norm: float = 1.0) -> optax.GradientTransformation:
  """Adam with global-norm clipping; the learning rate is a hyper-parameter in the state
  (``set_learning_rate``), so that the scheduler can lower it after a rollback."""
  return optax.inject_hyperparams(
      lambda learning_rate: optax.chain(optax.clip_by_global_norm(clip_norm),
                                        optax.adam(learning_rate)))(learning_rate=lr)


def init_state(params, tx: optax.GradientTransformation) -> AlignState:
  return AlignState(jnp.zeros((), jnp.int32), params, tx.init(params))


def set_learning_rate(state: AlignState, lr) -> AlignState:
  hp = dict(state.opt_state.hyperparams, learning_rate=jnp.asarray(lr, jnp.float32))
  return state.replace(opt_state=state.opt_state._replace(hyperparams=hp))


def learning_rate(state: AlignState) -> jax.Array:
  return state.opt_state.hyperparams["learning_rate"]


def init_lora(key, sampling, base_params, rank: int):
  """LoRA adapters on every dense and convolution kernel of the denoiser."""
  return lora_lib.init_lora(key, sampling.get(base_params), rank,
                            filter_fn=lora_lib.all_kernels)


def make_lora_init(sampling, lora_rank: int, tx) -> Callable:
  """``init(key, base_params) -> AlignState``: fresh adapters and optimiser state."""
  def init(key, base_params):
    return init_state(init_lora(key, sampling, base_params, lora_rank), tx)
  return jax.jit(init)  # one compiled initialiser, not one eager op per adapter


SAMPLE_FROM = ("current", "reference")


def check_sample_from(sample_from: str) -> None:
  if sample_from not in SAMPLE_FROM:
    raise ValueError(f"sample_from must be one of {SAMPLE_FROM}, got {sample_from!r}")


def sampling_params(sampling, base_params, lora, sample_from: str, scale: float = 1.0):
  """The (gradient-stopped) params that generate the training samples: the aligned model
  (``current``) or the reference (``reference``)."""
  return jax.lax.stop_gradient(aligned_params(
      sampling, base_params, lora if sample_from == "current" else None, scale))


def aligned_params(sampling, base_params, lora, scale: float = 1.0):
  """Full model params with the adapters merged into the denoiser (``lora=None``: the
  reference)."""
  if lora is None:
    return base_params
  return sampling.put(base_params, lora_lib.merge_lora(sampling.get(base_params), lora, scale))


# ----------------------------------------------------------------------------- collectives
def pmean(x, axis_name):
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


def psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def num_devices(axis_name):
  return 1 if axis_name is None else jax.lax.psum(1, axis_name)


def all_gather(x, axis_name):
  """``[b, ...]`` per device -> ``[n b, ...]`` in device order (identity on one device)."""
  return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


def global_ids(local_batch: int, axis_name) -> jax.Array:
  """``[b]`` global indices of this device's rows (device ``i`` holds ``i b .. (i+1) b - 1``)."""
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_batch
  return offset + jnp.arange(local_batch)


def per_sample_keys(key, ids) -> jax.Array:
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)


def value_and_grad(loss_fn: Callable, params, axis_name):
  """``((loss, aux), grads)`` of the global mean loss (see the module doc)."""
  global_loss = lambda p: jax.tree.map(lambda v: pmean(v, axis_name), loss_fn(p))
  (loss, aux), grads = jax.value_and_grad(global_loss, has_aux=True)(params)
  return (loss, aux), jax.tree.map(lambda g: pmean(g, axis_name), grads)


def apply_gradients(state: AlignState, tx, loss, grads, metrics: dict):
  """One optimiser step, skipped (state unchanged, ``nonfinite = 1``) if the loss, the
  gradients or the new params are not finite."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new = AlignState(state.step + 1, params, opt_state)
  ok = jnp.isfinite(loss) & all_finite(grads, params)
  metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                 nonfinite=1.0 - ok.astype(jnp.float32))
  kept = keep_if_finite(ok, new, state)
  return kept.replace(step=state.step + 1), metrics


# -------------------------------------------------------------------------------- sampling
class Samples(NamedTuple):
  """Per-sample results of :func:`sample_contexts` (leading axis ``[B]``)."""
  x_0: jax.Array
  cond: Any                   # [B, ...] or None
  inpaint: Optional[Inpaint]  # mask / values [B, ...] or None
  chain: Optional[Chain]      # fields [B, S, ...] (sample-major) or None


def _squeeze1(tree):
  return jax.tree.map(lambda a: a.reshape(a.shape[:1] + a.shape[2:]), tree)


def sample_contexts(sampling, sampler, params, keys, hist, **kw) -> Samples:
  """One sample per context with its own key: ``keys [B]``, ``hist [B, K, O]``.

  ``sampler`` is ``sampling.gen.sample`` or a :meth:`~dmc_jax.diffusion.chain.Sampler.replace`
  of it; ``params`` are full model params; ``**kw`` go to the sampler (knobs,
  ``grad_weights``).
  """
  dparams = sampling.get(params)

  def one(key, h):
    k_prep, k_sample = jax.random.split(key)
    x_T, cond, inpaint = sampling.prepare(k_prep, h[None])
    out = sampler(dparams, k_sample, x_T, cond, inpaint, **kw)
    chain = None
    if out.chain is not None:  # [S, 1, ...] -> [S, ...]
      c = out.chain
      chain = Chain(t=c.t, x_t=c.x_t[:, 0], x_tm1=c.x_tm1[:, 0], mean=c.mean[:, 0], std=c.std,
                    log_prob=c.log_prob[:, 0])
    return out.x_0[0], jax.tree.map(lambda a: a[0], cond), inpaint, chain

  x_0, cond, inpaint, chain = jax.vmap(one)(keys, hist)
  if inpaint is not None:  # values [B, 1, ...]; the mask [B, 1, ...] or [B, ...]
    values = _squeeze1(inpaint.values)
    mask = inpaint.mask
    if mask.ndim == inpaint.values.ndim:
      mask = _squeeze1(mask)
    inpaint = Inpaint(jnp.broadcast_to(mask, values.shape), values)
  return Samples(x_0, cond, inpaint, chain)


def sample_errors(errors_fn, dparams, keys, x_0, cond, inpaint_mask, weights=None):
  """Each sample's training error with its own key: ``(errors [B], log_snr [B])``;
  ``weights``: the pretraining loss's per-entry weights (``Sampling.loss_weights``)."""
  kw = {} if weights is None else {"weights": weights}

  def one(key, x, c, m):
    err, lam = errors_fn(dparams, key, x[None], jax.tree.map(lambda a: a[None], c),
                         inpaint_mask=None if m is None else m[None], **kw)
    return err[0], lam[0]
  return jax.vmap(one)(keys, x_0, cond, inpaint_mask)


def make_q_reward(sampling, q_fn: Callable) -> Callable:
  """``reward(params, critic_params, x_0 [B, ...], hist [B, K, O]) -> [B]``: the clipped
  double (min over heads) Q-value of the sample's first action at the current observation.
  :func:`dmc_jax.aligners.rewards.make_reward` has the plan-level and pessimistic ones."""
  return rewards.make_reward(sampling, q_fn, kind="first")


def repeat_contexts(hist, ids, num_samples: int):
  """``[b, K, O] -> [b G, K, O]`` and global sample ids ``[b G]`` (context id ``* G + g``)."""
  rep = jnp.repeat(hist, num_samples, axis=0)
  sid = (ids[:, None] * num_samples + jnp.arange(num_samples)[None]).reshape(-1)
  return rep, sid


def knn_log_distance(x, eps: float = 1e-6):
  """Kozachenko–Leonenko entropy term: each candidate's log distance to its nearest
  neighbour among the candidates of its context, ``x [b, G, ...] -> [b, G]``. Adding it to the
  reward (or subtracting it from the loss) spreads the candidates: an entropy bonus that
  needs no density."""
  b, g = x.shape[:2]
  flat = x.reshape(b, g, -1)
  d2 = jnp.sum(jnp.square(flat[:, :, None] - flat[:, None]), -1)
  d2 = jnp.where(jnp.eye(g, dtype=bool)[None], jnp.inf, d2)
  return 0.5 * jnp.log(jnp.min(d2, -1) + eps)


def global_mean_std(x, axis_name):
  """Mean and std of ``x`` over the whole (global) batch."""
  mean = pmean(jnp.mean(x), axis_name)
  sq = pmean(jnp.mean(jnp.square(x)), axis_name)
  return mean, jnp.sqrt(jnp.maximum(sq - jnp.square(mean), 0.0))


def group_advantages(rewards, axis_name, clip: float = 5.0, eps: float = 1e-6):
  """``rewards [b, G]`` -> advantages ``[b, G]``: minus the context's mean (``G > 1``) or the
  global mean (``G = 1``), over the global std, clipped to ``[-clip, clip]``."""
  if rewards.shape[1] > 1:
    centred = rewards - jnp.mean(rewards, 1, keepdims=True)
  else:
    centred = rewards - pmean(jnp.mean(rewards), axis_name)
  std = jnp.sqrt(pmean(jnp.mean(jnp.square(centred)), axis_name))
  return jnp.clip(centred / (std + eps), -clip, clip)


def best_of_n_margins(rewards):
  """``rewards [b, G]`` -> ``max_j r_j - max_{j != i} r_j`` ``[b, G]`` (unscaled)."""
  g = rewards.shape[1]
  if g < 2:
    raise ValueError("best-of-N advantages need at least 2 samples per context")
  top2 = jax.lax.top_k(rewards, 2)[0]                                   # [b, 2]
  best = jnp.argmax(rewards, 1)
  return jnp.where(jnp.arange(g)[None] == best[:, None], (top2[:, 0] - top2[:, 1])[:, None],
                   0.0)


def best_of_n_advantages(rewards, axis_name, clip: float = 5.0, eps: float = 1e-6):
  """``rewards [b, G]`` -> advantages ``[b, G]`` for the objective ``E[max_i r(x_i)]`` over the
  ``G`` samples of a context (what IDQL ``argmax`` selection deploys): each sample's marginal
  contribution to the max, ``max_j r_j - max_{j != i} r_j`` (the best sample's margin over the
  second best, 0 for the others). The baseline ``max_{j != i} r_j`` does not depend on
  ``x_i``, so ``sum_i grad log pi(x_i) A_i`` is an unbiased gradient of ``E[max]``. Scaled by
  the global RMS and clipped like :func:`group_advantages`."""
  adv = best_of_n_margins(rewards)
  rms = jnp.sqrt(pmean(jnp.mean(jnp.square(adv)), axis_name))
  return jnp.clip(adv / (rms + eps), -clip, clip)
