"""SFT on high-reward samples, filtered by the reference likelihood. PURE.

From ``N`` generated samples keep the ``top_k`` by reward among those whose likelihood proxy
under the reference is above a threshold. The proxy is ``-L_ref(x)``, the reference's
denoising loss averaged over noise levels (an ELBO estimate up to constants): samples the
reference finds implausible (off its data manifold) are dropped even if the critic likes
them — the critic's values there are extrapolations.
"""
import jax
import jax.numpy as jnp


def select_for_sft(rewards, ref_log_lik, *, top_k: int, min_log_lik):
  """Returns ``(keep [N] bool, weights [N])``: the ``top_k`` highest rewards among the
  samples with ``ref_log_lik >= min_log_lik`` (fewer if fewer pass). ``weights`` = keep / count.
  """
  eligible = ref_log_lik >= min_log_lik
  score = jnp.where(eligible, rewards, -jnp.inf)
  order = jnp.argsort(-score)
  rank = jnp.empty_like(order).at[order].set(jnp.arange(order.shape[0]))
  keep = eligible & (rank < top_k)
  return keep, keep / jnp.maximum(jnp.sum(keep), 1)
