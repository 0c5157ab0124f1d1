"""SFT on high-reward samples, filtered by the reference likelihood. PURE.

From ``G`` generated samples per context keep the best by reward among those whose
likelihood proxy under the reference is above a threshold. Samples are ranked *within their
context* (``rank="context"``: the top ``keep_frac * G`` of each context; ``"centred"``: the
global top ``keep_frac`` of the reward minus its context's mean), as RL and DPO compare
samples of one context: a critic's Q is dominated by the state's value, so a global ranking
of raw Q (``"global"``, kept for comparison) keeps or drops whole contexts and barely chooses
between actions. The proxy is ``-L_ref(x)``, the reference's
denoising loss averaged over noise levels (an ELBO estimate up to constants): samples the
reference finds implausible (off its data manifold) are dropped even if the critic likes
them — the critic's values there are extrapolations.
"""
from typing import Callable

import jax
import jax.numpy as jnp

from dmc_jax.aligners import base


RANKS = ("context", "centred", "global")


def select_for_sft(rewards, ref_log_lik, *, top_k: int, min_log_lik):
  """Returns ``(keep [N] bool, weights [N])``: the ``top_k`` highest rewards among the
  samples with ``ref_log_lik >= min_log_lik`` (fewer if fewer pass). ``weights`` = keep / count.
  """
  eligible = ref_log_lik >= min_log_lik
  keep = eligible & (_ranks(jnp.where(eligible, rewards, -jnp.inf)) < top_k)
  return keep, keep / jnp.maximum(jnp.sum(keep), 1)


def _ranks(score, axis: int = -1):
  """Each entry's position along ``axis`` when sorted by decreasing score (0 = best)."""
  return jnp.argsort(jnp.argsort(-score, axis=axis), axis=axis)


def select_per_context(rewards, ref_log_lik, *, keep_frac: float, min_log_lik,
                       rank: str = "context"):
  """``rewards, ref_log_lik [C, G]`` (``G`` samples of each of ``C`` contexts) ->
  ``(keep [C, G] bool, weights [C, G])`` (weights = keep / count).

  * ``context``: in every context, the ``max(1, round(keep_frac * G))`` highest rewards among
    its eligible samples (``ref_log_lik >= min_log_lik``);
  * ``centred``: the global top ``keep_frac`` of ``reward - mean(reward of the context)``;
  * ``global``: the global top ``keep_frac`` of the raw reward.
  """
  if rank not in RANKS:
    raise ValueError(f"unknown SFT rank {rank!r}; known: {RANKS}")
  c, g = rewards.shape
  if rank == "context":
    k = max(1, int(round(keep_frac * g)))
    eligible = ref_log_lik >= min_log_lik
    keep = eligible & (_ranks(jnp.where(eligible, rewards, -jnp.inf), axis=1) < k)
    return keep, keep / jnp.maximum(jnp.sum(keep), 1)
  score = rewards - jnp.mean(rewards, 1, keepdims=True) if rank == "centred" else rewards
  keep, w = select_for_sft(score.reshape(-1), ref_log_lik.reshape(-1),
                           top_k=max(1, int(keep_frac * c * g)), min_log_lik=min_log_lik)
  return keep.reshape(c, g), w.reshape(c, g)


def make_sft_aligner(sampling, reward_fn: Callable, tx, *, num_samples: int = 8,
                     keep_frac: float = 0.25, lik_quantile: float = 0.2, lik_draws: int = 4,
                     lora_rank: int = 8, lora_scale: float = 1.0, sample_from: str = "current",
                     rank: str = "context", axis_name=None):
  """SFT update: ``num_samples`` samples per context from the current model (iterated SFT)
  or the reference; the reference likelihood proxy is ``-mean_d e_ref(x)`` over
  ``lik_draws`` noise draws; samples below the ``lik_quantile`` quantile of the (global) batch
  are dropped, and among the rest the ``keep_frac`` share with the highest rewards is kept,
  ranked within each context (``rank``, see :func:`select_per_context`); one step of the
  ordinary diffusion loss on those (in-painted entries excluded, as in pretraining)."""
  base.check_sample_from(sample_from)
  if not 0 < keep_frac <= 1:
    raise ValueError(f"keep_frac must be in (0, 1], got {keep_frac}")
  if not 0 <= lik_quantile < 1:
    raise ValueError(f"lik_quantile must be in [0, 1), got {lik_quantile}")
  if rank not in RANKS:
    raise ValueError(f"unknown SFT rank {rank!r}; known: {RANKS}")

  def update(state, base_params, critic_params, batch, key):
    hist = batch["hist"]
    b = hist.shape[0]
    k_sample, k_lik, k_loss = jax.random.split(key, 3)
    hist_rep, sid = base.repeat_contexts(hist, base.global_ids(b, axis_name), num_samples)
    params = base.sampling_params(sampling, base_params, state.params, sample_from, lora_scale)
    smp = base.sample_contexts(sampling, sampling.gen.sample, params,
                               base.per_sample_keys(k_sample, sid), hist_rep)
    r = reward_fn(params, critic_params, smp.x_0, hist_rep)
    imask = None if smp.inpaint is None else smp.inpaint.mask
    ref_d = sampling.get(base_params)
    lik = -jnp.mean(jnp.stack([
        base.sample_errors(sampling.gen.errors, ref_d,
                           base.per_sample_keys(jax.random.fold_in(k_lik, d), sid), smp.x_0,
                           smp.cond, imask)[0] for d in range(lik_draws)]), 0)
    r_all, lik_all = base.all_gather(r, axis_name), base.all_gather(lik, axis_name)
    keep_all, w_all = select_per_context(
        r_all.reshape(-1, num_samples), lik_all.reshape(-1, num_samples), keep_frac=keep_frac,
        min_log_lik=jnp.quantile(lik_all, lik_quantile), rank=rank)
    keep_all, w_all = keep_all.reshape(-1), w_all.reshape(-1)
    n = r.shape[0]
    start = 0 if axis_name is None else jax.lax.axis_index(axis_name) * n
    w = jax.lax.dynamic_slice_in_dim(w_all, start, n)
    keys = base.per_sample_keys(k_loss, sid)
    n_dev = base.num_devices(axis_name)

    def loss_fn(lo):
      dparams = sampling.get(base.aligned_params(sampling, base_params, lo, lora_scale))
      err, _ = base.sample_errors(sampling.gen.errors, dparams, keys, smp.x_0, smp.cond, imask,
                                  sampling.loss_weights)
      # The global loss is sum_i w_i e_i over all devices; the caller takes the mean over
      # devices, hence the factor n_dev.
      return n_dev * jnp.sum(w * err), {}

    (loss, m), grads = base.value_and_grad(loss_fn, state.params, axis_name)
    new, m = base.apply_gradients(state, tx, loss, grads, m)
    m.update(reward=jnp.mean(r_all), reward_std=jnp.std(r_all),
             kept=jnp.sum(keep_all).astype(jnp.float32),
             kept_reward=jnp.sum(w_all * r_all),
             lik_threshold=jnp.quantile(lik_all, lik_quantile))
    return new, m

  return base.Aligner(base.make_lora_init(sampling, lora_rank, tx), update)
