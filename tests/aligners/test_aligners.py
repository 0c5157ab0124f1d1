"""Aligner updates: device-split invariance (1 device = pmap = shard_map on 4), PPO ratio at
the old params, truncation K, the cascade's conditioning and warm start."""
import contextlib
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

from configs import nav1d as nav1d_config
from dmc_jax.aligners import base, cascade, dpo, rl, sft
from dmc_jax.train import builders, sharding

OBS, ACT = 4, 1


@functools.lru_cache(maxsize=None)
def setup(model="dp"):
  c = nav1d_config.get_config(f"{model},full,smoke")
  # The twin-Q critic these equivalence tests were built on. With the default ten random
  # heads, after one plain-SGD step (lr 1, gradient norm 7) the reinforce test's next two
  # updates have loss and gradient exactly 0 (the samples of each context tie), so "the
  # losses differ" cannot be checked, and PPO's second epoch sits on a clip boundary. The
  # tests check the parallel and chunked updates, not the critic.
  c.critic.num_q, c.critic.q_agg = 2, "min"
  dmc = builders.make_dmc(c, OBS, ACT)
  params = dmc.init(jax.random.key(0))
  cr = builders.make_critic(c)
  q_mod, v_mod, q_fn = cr.q_module, cr.v_module, cr.q_fn
  qp = jax.jit(q_mod.init)(jax.random.key(1), jnp.zeros((1, OBS)), jnp.zeros((1, ACT)))["params"]
  vp = jax.jit(v_mod.init)(jax.random.key(2), jnp.zeros((1, OBS)))["params"]
  hist = jax.random.uniform(jax.random.key(3), (8, dmc.history, OBS), minval=-1, maxval=1)
  return c, dmc, params, (qp, vp), base.make_q_reward(dmc.sampling, q_fn), hist


def sgd():
  # Plain SGD: the update is the gradient itself, so comparisons test the gradient (Adam's
  # first step, lr * g / |g|, would hide its scale).
  return optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)


BUILDERS = {
    "ppo": lambda s, r, tx, ax: rl.make_policy_gradient_aligner(
        s, r, tx, method="ppo", num_samples=2, epochs=2, step_groups=2, kl_coef=0.1,
        axis_name=ax),
    "reinforce": lambda s, r, tx, ax: rl.make_policy_gradient_aligner(
        s, r, tx, method="reinforce", num_samples=2, credit="similarity", axis_name=ax),
    "qgrad": lambda s, r, tx, ax: rl.make_qgrad_aligner(
        s, r, tx, num_samples=2, num_grad_steps=2, credit="decreasing", entropy_coef=0.1,
        axis_name=ax),
    "dpo": lambda s, r, tx, ax: dpo.make_dpo_aligner(s, r, tx, beta=50.0, num_samples=2,
                                                     axis_name=ax),
    "sft": lambda s, r, tx, ax: sft.make_sft_aligner(s, r, tx, num_samples=2, lik_draws=2,
                                                     axis_name=ax),
}


def perturbed(state):
  """Non-zero adapters (fresh LoRA has b = 0, where some gradients vanish). The noise comes
  from numpy: eager jax ops per leaf would compile a kernel per leaf shape."""
  rng = np.random.default_rng(9)
  return state.replace(params=jax.tree.map(
      lambda x: jnp.asarray(np.asarray(x) + 0.05 * rng.standard_normal(x.shape), x.dtype),
      state.params))


def max_rel_diff(a, b, ref):
  """Largest |(a - ref) - (b - ref)| over the largest |a - ref| (numpy: no compiles)."""
  to_np = lambda t: [np.asarray(x, np.float64) for x in jax.tree.leaves(t)]
  a, b, ref = to_np(a), to_np(b), to_np(ref)
  scale = max(float(np.max(np.abs(x - r))) for x, r in zip(a, ref))
  return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b)) / scale, scale


class DeviceSplitTest(parameterized.TestCase):
  """The acceptance test of the data-parallel design: 4 simulated devices give the update of
  one device with the whole batch, under pmap and under shard_map, for every aligner."""

  @parameterized.parameters(*BUILDERS)
  def test_one_device_equals_pmap_equals_shard_map(self, name):
    self.assertEqual(jax.device_count(), 4)
    _, dmc, params, critic, reward, hist = setup()
    tx = sgd()
    build = lambda ax: BUILDERS[name](dmc.sampling, reward, tx, ax)
    state = perturbed(build(None).init(jax.random.key(4), params))
    out = {}
    for mode in sharding.PARALLEL:
      update, n = sharding.parallelize(lambda ax: build(ax).update, mode)
      self.assertEqual(n, 1 if mode == "none" else 4)
      new, m = update(jax.tree.map(jnp.copy, state), params, critic, {"hist": hist},
                      jax.random.key(7))
      out[mode] = (new, m)
      self.assertEqual(float(m["nonfinite"]), 0.0)
    for mode in ("pmap", "shard_map"):
      rel, scale = max_rel_diff(out["none"][0].params, out[mode][0].params, state.params)
      self.assertGreater(scale, 0.0)  # the update did something
      self.assertLess(rel, 2e-3, f"{name} {mode}")
      self.assertAlmostEqual(float(out["none"][1]["loss"]), float(out[mode][1]["loss"]),
                             delta=1e-4 * (1 + abs(float(out["none"][1]["loss"]))))


LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"  # jax.monitoring


@contextlib.contextmanager
def count_lowerings():
  """Collects the names of the functions JAX lowers (traces to MLIR) inside the block: one
  per compilation, persistent-cache hits included."""
  names = []

  def listener(event, duration, **kw):
    if event == LOWERING_EVENT:
      names.append(kw.get("fun_name"))
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield names
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


class CompiledChunkTest(parameterized.TestCase):
  """``parallelize_chunk`` (one ``lax.scan`` over a chunk, batches built inside) gives the
  numbers of one Python-dispatched update per step, bit for bit on CPU, in every mode."""

  def test_scanned_chunk_equals_update_loop(self, name="reinforce",
                                            modes=("none", "pmap", "shard_map")):
    _, dmc, params, critic, reward, hist = setup()
    tx = sgd()
    build = lambda ax: BUILDERS[name](dmc.sampling, reward, tx, ax)
    state = perturbed(build(None).init(jax.random.key(4), params))
    pool = jnp.concatenate([hist, -hist, 0.5 * hist])  # batches differ update to update
    batch_fn = lambda u, aux: {"hist": jnp.roll(pool, u, axis=0)[:8] * aux}
    key, u0, n = jax.random.key(11), 5, 3
    chunks = {}
    for mode in modes:
      update, _ = sharding.parallelize(lambda ax: build(ax).update, mode)
      loop_state, loop_m = jax.tree.map(jnp.copy, state), []
      for u in range(u0, u0 + n):
        loop_state, m = update(loop_state, params, critic, batch_fn(u, np.float32(1.0)),
                               jax.random.fold_in(key, u))
        loop_m.append(m)
      chunk, _ = sharding.parallelize_chunk(lambda ax: build(ax).update, mode, batch_fn, n)
      chunks[mode] = chunk
      chunk_state, chunk_m = chunk(jax.tree.map(jnp.copy, state), params, critic, key,
                                   np.int32(u0), np.float32(1.0))
      chex.assert_trees_all_equal(loop_state, chunk_state, custom_message=f"{name} {mode}")
      self.assertEqual(chunk_m["loss"].shape, (n,))
      np.testing.assert_array_equal(np.asarray(chunk_m["loss"]),
                                    np.asarray([m["loss"] for m in loop_m]))
      # The keys and batches really vary: the three losses differ.
      self.assertEqual(len(set(np.asarray(chunk_m["loss"]).tolist())), n)
      # The next chunks (a state from a chunk, a fresh learning rate in it) do not compile
      # the chunk again: every call places its arguments the same way.
      with count_lowerings() as lowered:
        st = base.set_learning_rate(chunk_state, 0.5)
        st, _ = chunk(st, params, critic, key, np.int32(u0 + n), np.float32(1.0))
        st = base.set_learning_rate(st, 0.25)
        chunk(st, params, critic, key, np.int32(u0 + 2 * n), np.float32(1.0))
      self.assertEqual(lowered, [], mode)
    # The NaN-injection factor reaches the batch: the chunk's updates are all non-finite.
    _, m = chunks["none"](state, params, critic, key, np.int32(u0), np.float32(np.nan))
    self.assertTrue(bool(np.all(np.asarray(m["nonfinite"]) > 0)))


class PolicyGradientTest(parameterized.TestCase):

  def test_recorded_log_probs_are_recomputed_exactly(self):
    """PPO's ratio is 1 at the old params: the per-step log-prob recomputed from the recorded
    chain equals the one recorded while sampling (Diffuser: in-painted entries excluded)."""
    for model in ("dp", "diffuser"):
      _, dmc, params, _, _, hist = setup(model)
      s = dmc.sampling
      sampler = s.gen.sample.replace(return_chain=True)
      keys = jax.random.split(jax.random.key(1), hist.shape[0])
      # Both jitted: eagerly, every op of the chain would compile on its own.
      smp = jax.jit(lambda p, ks, h: base.sample_contexts(s, sampler, p, ks, h,
                                                          **s.gen.stochastic))(params, keys, hist)
      ch = smp.chain
      free = None if smp.inpaint is None else ~smp.inpaint.mask
      k = jnp.arange(sampler.num_steps)
      lp = jax.jit(lambda p, x_t, x_tm1, cond, free: jax.vmap(lambda xt, xtm1, c, f: jax.vmap(
          lambda a, b, kk: sampler.step_log_prob(s.get(p), a[None], b[None], kk,
                                                 None if c is None else c[None],
                                                 None if f is None else f[None],
                                                 **s.gen.stochastic)[0][0])(xt, xtm1, k))(
          x_t, x_tm1, cond, free))(params, ch.x_t, ch.x_tm1, smp.cond, free)
      np.testing.assert_allclose(lp, ch.log_prob, rtol=1e-4, atol=1e-3)
      self.assertTrue(np.all(np.asarray(ch.std[:, :-1]) > 0))  # stochastic but the last

  def test_ode_sampler_is_rejected_for_ppo(self):
    c = nav1d_config.get_config("dp,full,smoke")
    c.diffusion.sampler = "ode"
    dmc = builders.make_dmc(c, OBS, ACT)
    with self.assertRaisesRegex(ValueError, "stochastic sampler"):
      rl.make_policy_gradient_aligner(dmc.sampling, None, sgd())

  def test_qgrad_truncation(self):
    """K = 0: zero gradient (the reward is constant in theta); K = S: every step contributes
    (a larger gradient than K = 1)."""
    _, dmc, params, critic, reward, hist = setup()
    s_steps = dmc.sampling.gen.num_steps
    norms = {}
    for k in (0, 1, s_steps):
      al = rl.make_qgrad_aligner(dmc.sampling, reward, sgd(), num_grad_steps=k, reg_coef=0.0)
      st = perturbed(al.init(jax.random.key(4), params))
      _, m = jax.jit(al.update)(st, params, critic, {"hist": hist}, jax.random.key(5))
      norms[k] = float(m["grad_norm"])
    self.assertEqual(norms[0], 0.0)
    self.assertGreater(norms[1], 0.0)
    self.assertNotAlmostEqual(norms[1], norms[s_steps], places=5)

  @parameterized.parameters("ppo", "qgrad", "dpo", "sft")
  def test_each_aligner_raises_the_reward_of_a_bandit(self, name):
    """A reward that prefers large actions: a few updates raise the mean reward. A sign error
    (winner and loser swapped in DPO, the Q-gradient objective flipped, SFT keeping the worst,
    the advantage's sign) makes the reward fall instead."""
    _, dmc, params, critic, _, hist = setup()
    reward = lambda p, cp, x_0, h: x_0[:, 0, 0]
    tx = base.make_optimizer(3e-3 if name == "ppo" else 1e-2)
    al = {"ppo": lambda: rl.make_policy_gradient_aligner(dmc.sampling, reward, tx,
                                                         num_samples=4, epochs=2),
          "qgrad": lambda: rl.make_qgrad_aligner(dmc.sampling, reward, tx, num_grad_steps=2,
                                                 reg_coef=0.0),
          "dpo": lambda: dpo.make_dpo_aligner(dmc.sampling, reward, tx, beta=50.0,
                                              num_samples=4),
          "sft": lambda: sft.make_sft_aligner(dmc.sampling, reward, tx, num_samples=4,
                                              lik_quantile=0.0, lik_draws=1)}[name]()
    st = al.init(jax.random.key(4), params)
    upd = jax.jit(al.update)
    rewards = []
    for i in range(15):
      st, m = upd(st, params, critic, {"hist": hist}, jax.random.key(i))
      rewards.append(float(m["reward"]))
    self.assertGreater(np.mean(rewards[-3:]), np.mean(rewards[:3]) + 0.1, rewards)


class EntropyBonusTest(parameterized.TestCase):
  """``align.rl.entropy_coef``: the nearest-neighbour entropy bonus spreads each context's
  candidates (what keeps a best-of-N controller something to choose from)."""

  def test_knn_log_distance_matches_brute_force(self):
    x = np.random.default_rng(0).standard_normal((3, 5, 4, 2)).astype(np.float32)
    got = np.asarray(base.knn_log_distance(jnp.asarray(x)))
    want = np.empty((3, 5))
    for c in range(3):
      for i in range(5):
        d = [np.sum((x[c, i] - x[c, j]) ** 2) for j in range(5) if j != i]
        want[c, i] = 0.5 * np.log(min(d) + 1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

  @parameterized.parameters(1.0, -1.0)
  def test_the_q_gradient_bonus_spreads_and_its_negative_gathers(self, sign):
    """The reward is the candidates' own entropy term under ``stop_gradient``: it carries no
    gradient, and the ``reward`` metric reports the spread the bonus alone produces. A positive
    coefficient must raise it, a negative one lower it (a sign error fails one of the two).
    (PPO's bonus shapes the advantages instead; on this random-weight toy its effect on the
    spread is below the update-to-update noise, so it is not asserted here.)"""
    _, dmc, params, critic, _, hist = setup()
    g = 4

    def reward(p, cp, x_0, h):
      ent = base.knn_log_distance(x_0.reshape((-1, g) + x_0.shape[1:])).reshape(-1)
      return jax.lax.stop_gradient(ent)

    al = rl.make_qgrad_aligner(dmc.sampling, reward, base.make_optimizer(1e-2), num_samples=g,
                               num_grad_steps=2, reg_coef=0.0, entropy_coef=sign)
    st = al.init(jax.random.key(4), params)
    upd = jax.jit(al.update)
    ent = []
    for _ in range(12):
      # The same noise every update: the change in spread is the parameters' alone.
      st, m = upd(st, params, critic, {"hist": hist}, jax.random.key(7))
      ent.append(float(m["reward"]))
    change = np.mean(ent[-3:]) - np.mean(ent[:3])
    self.assertGreater(sign * change, 0.05, ent)


class CascadeTest(absltest.TestCase):

  def _make(self, mode):
    c, dmc, params, critic, _, hist = setup("diffuser" if mode == "inpaint" else "dp")
    # The first action itself is the reward: alternatives beat the first sample about half
    # the time (a random critic can be nearly flat in the action).
    reward = lambda p, cp, x, h: dmc.sampling.decode(p, x).actions[:, 0, 0]
    casc = cascade.make_cascade(dmc.sampling, lambda fn: builders.make_generator(c, fn),
                                mode=mode, share_step=1, hidden=16, num_candidates=2)
    tx = sgd()
    state = casc.init(jax.random.key(3), params, tx, hist[:1])
    return dmc, params, critic, reward, hist, casc, state, tx

  def test_warm_start_equals_the_first_model_and_conditioning_is_used(self):
    dmc, params, _, _, hist, casc, state, _ = self._make("latent")
    ip = casc.inference_params(params, state)
    x_T = jax.random.normal(jax.random.key(1), (8, dmc.horizon, ACT))
    cond = hist.reshape(8, -1)
    t = jnp.full((8,), 0.5)
    first = dmc.sampling.gen.denoise_fn(params, x_T, t, cond, None)
    fn = casc.gen.denoise_fn
    x_c1, x_c2 = x_T * 0.3, x_T * -0.7
    np.testing.assert_allclose(fn(ip["cascade"], x_T, t, (cond, x_c1)), first, atol=1e-6)
    # A trained adapter (non-zero output layer) makes the output depend on x^cond.
    trained = perturbed(state)
    ip2 = casc.inference_params(params, trained)
    d = jnp.abs(fn(ip2["cascade"], x_T, t, (cond, x_c1)) - fn(ip2["cascade"], x_T, t,
                                                                (cond, x_c2)))
    self.assertGreater(float(jnp.max(d)), 1e-3)
    # The wrapped DMC proposes with the cascade appended.
    prop = casc.wrap(dmc).propose(ip2, jax.random.key(0), hist[:2], 3)
    self.assertEqual(prop.actions.shape, (2, 3, dmc.execute_steps, ACT))

  def test_update_both_modes_and_device_split(self):
    for mode in ("latent", "inpaint"):
      dmc, params, critic, reward, hist, casc, state, tx = self._make(mode)
      state = perturbed(state)
      out = {}
      for par in (("none", "shard_map") if mode == "latent" else ("none",)):
        update, _ = sharding.parallelize(
            lambda ax: casc.make_update(reward, tx, axis_name=ax), par)
        new, m = update(jax.tree.map(jnp.copy, state), params, critic, {"hist": hist},
                        jax.random.key(2))
        out[par] = new
        self.assertEqual(float(m["nonfinite"]), 0.0)
        self.assertGreater(float(m["kept"]), 0.0)
      if "shard_map" in out:
        rel, _ = max_rel_diff(out["none"].params, out["shard_map"].params, state.params)
        self.assertLess(rel, 2e-3, mode)

  def test_inpaint_mode_keeps_the_block(self):
    dmc, params, _, _, hist, casc, state, _ = self._make("inpaint")
    ip = casc.inference_params(params, perturbed(state))
    wrapped = casc.wrap(dmc)
    x_T, cond, inpaint = wrapped.sampling.prepare(jax.random.key(0), hist)
    x_cond = jax.random.normal(jax.random.key(1), x_T.shape)
    blk = cascade.block_mask(x_T.shape[1:], (0.5, 1.0))
    self.assertTrue(bool(blk[-1].all()) and not bool(blk[0].any()))
    out = casc.gen.sample(ip["cascade"], jax.random.key(2), x_T, (cond, x_cond),
                          cascade.Inpaint(jnp.broadcast_to(inpaint.mask, x_T.shape) | blk,
                                          jnp.where(blk, x_cond, inpaint.values))).x_0
    np.testing.assert_allclose(jnp.where(blk, out, 0), jnp.where(blk, x_cond, 0), atol=1e-6)


if __name__ == "__main__":
  absltest.main()
