"""Denoising as a multi-step MDP: REINFORCE / PPO-clip losses and credit weights. PURE.

The sampler records the chain with per-step Gaussian log-probs ``log pi(x_{k+1} | x_k, c)``
(``[S, B]``, step 0 the noisiest). With advantages ``A [B]`` and credit weights
``kappa [S, B]`` the REINFORCE loss is ``-mean_b sum_k kappa_k log pi_k A``; PPO replaces
``log pi A`` with ``min(r A, clip(r, 1 - e, 1 + e) A)``, ``r = exp(log pi - log pi_old)``.
"""
from typing import Callable

import jax
import jax.numpy as jnp

from dmc_jax.aligners import base

CREDITS = ("uniform", "decreasing", "similarity")


def active_steps(stochastic, last_k: int = 0):
  """``stochastic [S, B]`` bool (the steps with ``std > 0``) -> the steps that get credit:
  all stochastic steps, or only the last ``last_k`` of them (``last_k > 0``; the paper's
  ``sg(log pi, K)``). Deterministic steps have log-prob 0 and no gradient, so they never
  count."""
  stochastic = jnp.asarray(stochastic, bool)
  if not last_k:
    return stochastic
  after = jnp.cumsum(stochastic[::-1].astype(jnp.int32), 0)[::-1]  # stochastic steps >= k
  return stochastic & (after <= last_k)


def credit_weights(kind: str, x_t=None, x_tm1=None, num_steps: int | None = None,
                   decay: float = 0.9, active=None):
  """Credit ``kappa [S, B]`` over the ``S`` denoising steps.

  ``active [S, B]`` (bool, default all) marks the steps that can be credited: the stochastic
  ones (see :func:`active_steps`); the others get 0 and each column sums to its number of
  active steps.

  * ``uniform``: 1 per active step.
  * ``decreasing``: ``decay^j`` for the active step with ``j`` active steps after it: full
    credit for the last *stochastic* step (the last, deterministic step has no gradient), less
    for steps further from ``z_0``.
  * ``similarity``: ``max(0, cos(z_k - z_{k+1}, z_T - z_0))`` from the sampled chain
    (``x_t, x_tm1 [S, B, ...]``): steps that moved towards the final sample get the credit.
  """
  if kind == "similarity":
    s, b = x_t.shape[:2]
    step = (x_t - x_tm1).reshape(s, b, -1)
    total = (x_t[0] - x_tm1[-1]).reshape(b, -1)
    cos = jnp.sum(step * total[None], -1) / (
        jnp.linalg.norm(step, axis=-1) * jnp.linalg.norm(total, axis=-1)[None] + 1e-8)
    w = jnp.maximum(cos, 0.0)
  else:
    s = num_steps if x_t is None else x_t.shape[0]
    b = 1 if x_t is None else x_t.shape[1]
    if active is not None:
      b = max(b, jnp.shape(active)[1])
    if kind == "uniform":
      w = jnp.ones((s, b))
    elif kind == "decreasing":
      act = jnp.ones((s, b), bool) if active is None else jnp.broadcast_to(active, (s, b))
      later = jnp.cumsum(act[::-1].astype(jnp.float32), 0)[::-1] - act  # active steps after
      w = decay ** later
    else:
      raise ValueError(f"unknown credit {kind!r}; known: {CREDITS}")
  if active is None:
    active = jnp.ones(w.shape, bool)
  active = jnp.broadcast_to(active, w.shape)
  w = jnp.where(active, w, 0.0)
  n = jnp.sum(active, 0, keepdims=True).astype(w.dtype)
  return w * n / jnp.maximum(jnp.sum(w, 0, keepdims=True), 1e-8)


def reinforce_loss(log_probs, advantages, credit):
  """``-mean_b sum_k kappa_{k,b} log pi_{k,b} A_b`` (``[S, B]``, ``[B]``, ``[S, B]``)."""
  adv = jax.lax.stop_gradient(advantages)
  return -jnp.mean(jnp.sum(jax.lax.stop_gradient(credit) * log_probs, 0) * adv)


def ppo_loss(log_probs, old_log_probs, advantages, credit, clip_eps: float = 0.2):
  """PPO-clip over denoising steps; returns ``(loss, metrics)`` (ratio statistics)."""
  adv = jax.lax.stop_gradient(advantages)[None]
  ratio = jnp.exp(log_probs - jax.lax.stop_gradient(old_log_probs))
  surr = jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv)
  loss = -jnp.mean(jnp.sum(jax.lax.stop_gradient(credit) * surr, 0))
  return loss, {"ppo_loss": loss, "ratio_mean": jnp.mean(ratio),
                "clip_frac": jnp.mean(jnp.abs(ratio - 1.0) > clip_eps)}


def approx_kl(log_probs, old_log_probs, active):
  """``mean((r - 1) - log r)`` over the ``active`` entries (Schulman's unbiased, non-negative
  estimator of ``KL(pi_old || pi)`` per denoising step); no gradient."""
  log_r = jax.lax.stop_gradient(log_probs - old_log_probs)
  k3 = jnp.expm1(log_r) - log_r
  act = jnp.asarray(active, k3.dtype)
  return jnp.sum(k3 * act) / jnp.maximum(jnp.sum(act), 1.0)


def gaussian_kl(mean_p, mean_q, std, free=None):
  """Per-step ``KL(N(mean_p, std^2 I) || N(mean_q, std^2 I))`` between the aligned and the
  reference transitions (same std): ``mean_* [S, B, ...]``, ``std [S]`` or ``[S, B]`` ->
  ``[S, B]``; deterministic steps (``std = 0``) count 0; ``free`` masks in-painted entries."""
  s, b = mean_p.shape[:2]
  std = jnp.asarray(std)
  std = jnp.broadcast_to(std.reshape(s, 1) if std.ndim == 1 else std, (s, b))
  sq = jnp.square(mean_p - mean_q)
  if free is not None:
    sq = jnp.where(jnp.broadcast_to(free, sq.shape), sq, 0.0)
  positive = std > 0
  var = jnp.where(positive, jnp.square(std), 1.0)
  return jnp.where(positive, jnp.sum(sq.reshape(s, b, -1), -1) / (2.0 * var), 0.0)


# ------------------------------------------------------------------------- update functions
PG_METHODS = ("reinforce", "ppo")
OBJECTIVES = ("mean", "best_of_n", "mixed")
METHODS = PG_METHODS + ("qgrad",)


def make_policy_gradient_aligner(sampling, reward_fn: Callable, tx, *, method: str = "ppo",
                                 num_samples: int = 8, lora_rank: int = 8,
                                 lora_scale: float = 1.0, epochs: int = 2,
                                 minibatches: int = 1, step_groups: int = 1,
                                 clip_eps: float = 0.2, kl_coef: float = 0.0,
                                 credit: str = "uniform", credit_decay: float = 0.9,
                                 adv_clip: float = 5.0, entropy_coef: float = 0.0,
                                 last_k: int = 0, min_std: float = 0.0,
                                 objective: str = "mean", target_kl: float = 0.0,
                                 axis_name=None) -> base.Aligner:
  """REINFORCE / PPO-clip over the denoising MDP (Black et al., 2024; Fan et al., 2023).

  Each update samples ``G = num_samples`` chains per context with the stochastic sampler
  (``sampling.gen.stochastic`` knobs), scores ``x_0`` with ``reward_fn`` (plus
  ``entropy_coef`` times the nearest-neighbour entropy term), takes advantages relative to the
  context's mean, weights steps with ``credit``, and then:

  * ``reinforce``: one gradient step on ``-sum_k kappa_k log pi_k A``;
  * ``ppo``: ``epochs`` passes over the stored batch; each pass shuffles the denoising steps of
    every sample (and the samples, when ``minibatches > 1``) and takes
    ``minibatches * step_groups`` clipped steps, each on ``1 / minibatches`` of the samples
    and ``1 / step_groups`` of their steps.

  ``kl_coef > 0`` adds the per-step Gaussian KL to the reference transition.
  Trust region and truncation (DPPO's recipe for diffusion chains): ``clip_eps`` (PPO),
  ``kl_coef``, ``min_std`` (a floor on every stochastic step's std, applied when sampling and
  when re-evaluating log-probs, so the sampler trained is the sampler that samples), and
  ``last_k > 0``: only the last ``K`` stochastic steps are trained (``sg(log pi, K)`` of the
  paper's eq. 8; the earlier steps get no credit, no KL and no gradient).
  ``target_kl > 0`` (PPO): early stopping on the approximate KL from the sampling policy
  (the standard PPO ``target_kl``, as in Stable-Baselines3 and Spinning Up): before each
  clipped step the per-denoising-step estimate ``mean((r - 1) - log r)`` over the
  minibatch's credited steps is computed at the current adapters; once it exceeds
  ``target_kl``, that step and the update's remaining steps are skipped. Adam normalises the
  gradient, so the ratio clip alone bounds which samples push, not how far one step moves.
  ``objective``: ``mean`` maximises ``E[r]`` of one sample (context-centred advantages);
  ``best_of_n`` maximises ``E[max of the G samples]``, what ``argmax`` selection over
  candidates deploys (:func:`base.best_of_n_advantages`); ``mixed`` averages the two.
  With ``minibatches > 1`` each device shuffles its own samples, so the minibatches (not the
  expected update) depend on the number of devices; with ``minibatches = 1`` the update is
  the same on any number of devices.
  """
  if method not in PG_METHODS:
    raise ValueError(f"unknown policy-gradient method {method!r}; known: {PG_METHODS}")
  if sampling.gen.stochastic is None:
    raise ValueError("REINFORCE/PPO need a stochastic sampler; the probability-flow ODE is "
                     "deterministic (use ddpm, ddim, sde or flow)")
  if method == "reinforce":
    epochs, minibatches, step_groups = 1, 1, 1
  if objective not in OBJECTIVES:
    raise ValueError(f"unknown RL objective {objective!r}; known: {OBJECTIVES}")
  if objective != "mean" and num_samples < 2:
    raise ValueError(f"objective {objective!r} needs num_samples >= 2")
  if last_k < 0:
    raise ValueError(f"last_k must be >= 0 (0: every stochastic step), got {last_k}")
  if target_kl < 0:
    raise ValueError(f"target_kl must be >= 0 (0: no early stopping), got {target_kl}")
  sampler = sampling.gen.sample.replace(return_chain=True, num_grad_steps=None,
                                        min_std=max(min_std, sampling.gen.sample.min_std))
  knobs = dict(sampling.gen.stochastic)
  S = sampler.num_steps
  if S % step_groups:
    raise ValueError(f"step_groups={step_groups} must divide the {S} sampling steps")
  sg = S // step_groups
  n_updates = epochs * minibatches * step_groups

  def update(state, base_params, critic_params, batch, key):
    hist = batch["hist"]
    b = hist.shape[0]
    if (b * num_samples) % minibatches:
      raise ValueError(f"{b * num_samples} samples per device do not split into "
                       f"{minibatches} minibatches")
    mb = b * num_samples // minibatches
    k_sample, k_epochs = jax.random.split(key)
    hist_rep, sid = base.repeat_contexts(hist, base.global_ids(b, axis_name), num_samples)
    params = jax.lax.stop_gradient(
        base.aligned_params(sampling, base_params, state.params, lora_scale))
    smp = base.sample_contexts(sampling, sampler, params, base.per_sample_keys(k_sample, sid),
                               hist_rep, **knobs)
    reward = reward_fn(params, critic_params, smp.x_0, hist_rep)
    shaped = reward
    if entropy_coef:
      ent = base.knn_log_distance(smp.x_0.reshape((b, num_samples) + smp.x_0.shape[1:]))
      shaped = reward + entropy_coef * ent.reshape(-1)
    grouped = shaped.reshape(b, num_samples)
    if objective == "mean":
      adv = base.group_advantages(grouped, axis_name, adv_clip)
    elif objective == "best_of_n":
      adv = base.best_of_n_advantages(grouped, axis_name, adv_clip)
    else:
      adv = 0.5 * (base.group_advantages(grouped, axis_name, adv_clip) +
                   base.best_of_n_advantages(grouped, axis_name, adv_clip))
    adv = adv.reshape(-1)
    ch = smp.chain
    active = active_steps(ch.std.T > 0, last_k)                           # [S, B]
    kappa = credit_weights(credit, jnp.swapaxes(ch.x_t, 0, 1), jnp.swapaxes(ch.x_tm1, 0, 1),
                           decay=credit_decay, active=active).T           # [B, S]
    act_bs = active.T.astype(jnp.float32)                                 # [B, S]
    free = None if smp.inpaint is None else jnp.logical_not(smp.inpaint.mask)
    n = hist_rep.shape[0]
    ref_dparams = sampling.get(base_params)

    def perms(k_epoch):
      steps = jax.vmap(lambda k: jax.random.permutation(k, S))(
          base.per_sample_keys(k_epoch, sid))                               # [B, S]
      rows = jnp.arange(n)
      if minibatches > 1:  # device-local shuffle of the samples
        k_rows = jax.random.fold_in(k_epoch, 1 << 30 if axis_name is None else (1 << 30) +
                                    jax.lax.axis_index(axis_name))
        rows = jax.random.permutation(k_rows, n)
      return rows, steps

    row_perm, step_perm = jax.vmap(perms)(jax.random.split(k_epochs, epochs))

    def loss_fn(lora, rows, ks):
      dparams = sampling.get(base.aligned_params(sampling, base_params, lora, lora_scale))
      g = lambda a: None if a is None else a[rows]
      cond_r, free_r = jax.tree.map(lambda a: a[rows], smp.cond), g(free)
      x_t = ch.x_t[rows[:, None], ks]                                      # [mb, sg, ...]
      x_tm1 = ch.x_tm1[rows[:, None], ks]

      def item(p, xt, xtm1, k, c, f):
        lp, mean = sampler.step_log_prob(p, xt[None], xtm1[None], k,
                                         jax.tree.map(lambda a: a[None], c),
                                         None if f is None else f[None], **knobs)
        return lp[0], mean[0]
      over_steps = jax.vmap(item, (None, 0, 0, 0, None, None))
      over_rows = jax.vmap(over_steps, (None, 0, 0, 0, 0, 0))
      lp, mean = over_rows(dparams, x_t, x_tm1, ks, cond_r, free_r)         # [mb, sg]
      old = ch.log_prob[rows[:, None], ks]
      w = kappa[rows[:, None], ks]
      if method == "ppo":
        loss, m = ppo_loss(lp.T, old.T, adv[rows], w.T, clip_eps)
        m = dict(m, approx_kl=approx_kl(lp, old, act_bs[rows[:, None], ks]))
      else:
        loss = reinforce_loss(lp.T, adv[rows], w.T)
        m = {}
      if kl_coef:
        _, ref_mean = over_rows(ref_dparams, x_t, x_tm1, ks, cond_r, free_r)
        std = ch.std[rows[:, None], ks]
        fr = None if free_r is None else free_r[:, None]
        kl = gaussian_kl(jnp.swapaxes(mean, 0, 1), jax.lax.stop_gradient(
            jnp.swapaxes(ref_mean, 0, 1)), std.T,
            None if fr is None else jnp.swapaxes(jnp.broadcast_to(fr, mean.shape), 0, 1))
        kl = jnp.mean(jnp.sum(kl * act_bs[rows[:, None], ks].T, 0))
        loss = loss + kl_coef * kl
        m = dict(m, kl=kl)
      return loss, m

    def body(carry, u):
      st, stopped = carry
      e, rest = u // (minibatches * step_groups), u % (minibatches * step_groups)
      mi, gi = rest // step_groups, rest % step_groups
      rows = jax.lax.dynamic_slice_in_dim(row_perm[e], mi * mb, mb)
      ks = jax.lax.dynamic_slice_in_dim(step_perm[e][rows], gi * sg, sg, axis=1)
      (loss, m), grads = base.value_and_grad(lambda p: loss_fn(p, rows, ks), st.params,
                                             axis_name)
      if not (target_kl and method == "ppo"):
        st, m = base.apply_gradients(st, tx, loss, grads, m)
        return (st, stopped), m
      # the estimate is a global mean (value_and_grad pmeans the metrics), so every
      # device stops at the same step
      stopped = stopped | (m["approx_kl"] > target_kl)
      new_st, m = base.apply_gradients(st, tx, loss, grads, m)
      st = jax.lax.cond(stopped, lambda: st, lambda: new_st)
      return (st, stopped), dict(m, kl_stopped=stopped.astype(jnp.float32))

    (new, _), ms = jax.lax.scan(body, (state, jnp.asarray(False)), jnp.arange(n_updates))
    metrics = {k: jnp.mean(v) for k, v in ms.items()}
    metrics["nonfinite"] = jnp.max(ms["nonfinite"])
    metrics["reward"], metrics["reward_std"] = base.global_mean_std(reward, axis_name)
    return new.replace(step=state.step + 1), metrics

  return base.Aligner(base.make_lora_init(sampling, lora_rank, tx), update)


def make_qgrad_aligner(sampling, reward_fn: Callable, tx, *, num_samples: int = 1,
                       num_grad_steps: int = 1, lora_rank: int = 8, lora_scale: float = 1.0,
                       reg_coef: float = 1.0, credit: str = "uniform",
                       credit_decay: float = 0.9, entropy_coef: float = 0.0,
                       axis_name=None) -> base.Aligner:
  """Q-value policy gradient: maximise ``Q(x_0(theta))`` by back-propagating through the
  sampler, only through its last ``K = num_grad_steps`` steps (``stop_gradient`` before
  them, rematerialised after), with per-step gradient weights ``credit`` (``uniform`` or
  ``decreasing``).

  Regulariser: ``reg_coef * ||x_0(theta) - x_0(ref)||^2`` with the reference sampled from
  the *same noise*, which keeps the aligned sampler close to the foundation for any sampler
  (deterministic ones included). ``entropy_coef`` adds the nearest-neighbour entropy bonus.
  """
  if credit not in ("uniform", "decreasing"):
    raise ValueError(f"Q-gradient credit must be 'uniform' or 'decreasing', got {credit!r}")
  sampler = sampling.gen.sample.replace(num_grad_steps=num_grad_steps, return_chain=False)
  ref_sampler = sampler.replace(num_grad_steps=None)
  S = sampler.num_steps
  weights = credit_weights(credit, num_steps=S, decay=credit_decay)[:, 0] if credit != (
      "uniform") else None

  def update(state, base_params, critic_params, batch, key):
    hist = batch["hist"]
    b = hist.shape[0]
    hist_rep, sid = base.repeat_contexts(hist, base.global_ids(b, axis_name), num_samples)
    keys = base.per_sample_keys(key, sid)
    ref = base.sample_contexts(sampling, ref_sampler, jax.lax.stop_gradient(base_params),
                               keys, hist_rep).x_0

    def loss_fn(lora):
      params = base.aligned_params(sampling, base_params, lora, lora_scale)
      kw = {} if weights is None else {"grad_weights": weights}
      x_0 = base.sample_contexts(sampling, sampler, params, keys, hist_rep, **kw).x_0
      r = reward_fn(params, critic_params, x_0, hist_rep)
      reg = jnp.mean(jnp.sum(jnp.square(x_0 - ref).reshape(x_0.shape[0], -1), -1))
      loss = -jnp.mean(r) + reg_coef * reg
      if entropy_coef and num_samples > 1:
        ent = base.knn_log_distance(x_0.reshape((b, num_samples) + x_0.shape[1:]))
        loss = loss - entropy_coef * jnp.mean(ent)
      return loss, {"reward": jnp.mean(r), "reg": reg,
                    "reward_sq": jnp.mean(jnp.square(r))}

    (loss, m), grads = base.value_and_grad(loss_fn, state.params, axis_name)
    new, m = base.apply_gradients(state, tx, loss, grads, m)
    m["reward_std"] = jnp.sqrt(jnp.maximum(m.pop("reward_sq") - jnp.square(m["reward"]), 0.0))
    return new, m

  return base.Aligner(base.make_lora_init(sampling, lora_rank, tx), update)
