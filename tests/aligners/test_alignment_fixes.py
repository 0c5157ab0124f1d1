"""Issue #14's aligner defects, each against a closed form or a second implementation (every
test fails on the old behaviour), and the new rewards / critic heads."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

from configs import mujoco as mujoco_config
from configs import nav1d as nav1d_config
from dmc_jax.aligners import base, cascade, dpo, rewards, rl, sequential, sft
from dmc_jax.critics import selection as sel
from dmc_jax.data.episodes import Normalizer
from dmc_jax.diffusion import ddim, losses, schedules
from dmc_jax.models.dmc import Proposal, Sampling
from dmc_jax.networks.critic import EnsembleQ, TwinQ
from dmc_jax.train import align as align_lib
from dmc_jax.train import builders, validation

OBS, ACT = 4, 1


class SFTPerContextTest(absltest.TestCase):
  """Defect 1: rank within each context, not raw Q across the batch."""

  def setUp(self):
    super().setUp()
    k1, k2 = jax.random.split(jax.random.key(0))
    c, self.g = 64, 8
    state_value = jax.random.normal(k1, (c, 1))               # spread 1.0 across contexts
    self.r = state_value + 0.1 * jax.random.normal(k2, (c, self.g))  # 0.1 across actions
    self.lik = jnp.zeros_like(self.r)

  def test_context_rank_keeps_the_best_of_every_context(self):
    keep, w = sft.select_per_context(self.r, self.lik, keep_frac=0.25, min_log_lik=-1.0)
    np.testing.assert_array_equal(np.sum(keep, 1), 2)       # 0.25 x 8 in every context
    top2 = np.argsort(-np.asarray(self.r), 1)[:, :2]
    np.testing.assert_array_equal(np.sort(np.nonzero(keep)[1].reshape(-1, 2), 1),
                                  np.sort(top2, 1))
    np.testing.assert_allclose(np.sum(w), 1.0, rtol=1e-6)

  def test_global_rank_keeps_or_drops_whole_contexts(self):
    """What the old filter did: most contexts end all-or-nothing; ``centred`` fixes it too."""
    keep, _ = sft.select_per_context(self.r, self.lik, keep_frac=0.25, min_log_lik=-1.0,
                                     rank="global")
    n = np.sum(keep, 1)
    self.assertGreater(np.mean((n == 0) | (n == self.g)), 0.6)
    keep, _ = sft.select_per_context(self.r, self.lik, keep_frac=0.25, min_log_lik=-1.0,
                                     rank="centred")
    n = np.sum(keep, 1)
    self.assertLess(np.mean((n == 0) | (n == self.g)), 0.2)

  def test_likelihood_filter_applies_within_contexts(self):
    lik = self.lik.at[:, 0].set(-5.0)
    best = jnp.argmax(self.r, 1)
    r = self.r.at[:, 0].set(self.r[jnp.arange(64), best] + 1.0)  # best reward, implausible
    keep, _ = sft.select_per_context(r, lik, keep_frac=0.25, min_log_lik=-1.0)
    self.assertFalse(np.any(np.asarray(keep[:, 0])))
    np.testing.assert_array_equal(np.sum(keep, 1), 2)


def exact_gaussian_denoiser(params, x_t, t, cond, cond_mask, *, sched):
  """``E[eps | x_t]`` for data ``N(0, 1)`` on a VP schedule: ``sigma_t x_t``."""
  del params, cond, cond_mask
  i = jnp.round(t * sched.num_steps - 1).astype(jnp.int32)
  sigma = jnp.asarray(sched.sqrt_one_minus_alphas_cumprod)[i]
  return sigma[:, None] * x_t


class ClipTest(absltest.TestCase):
  """Defect 2: a clip inside the normalised data's range is refused."""

  def test_clip_at_one_std_shrinks_a_unit_gaussian(self):
    sched = schedules.make_cosine_schedule(100)
    fn = functools.partial(exact_gaussian_denoiser, sched=sched)
    x_T = jax.random.normal(jax.random.key(0), (4000, 1))
    var, tail = {}, {}
    for clip in (None, 1.0):
      smp = ddim.make_ddim_sampler(fn, sched, 100, clip_x0=clip)
      x = smp({}, jax.random.key(1), x_T).x_0
      var[clip], tail[clip] = float(jnp.var(x)), float(jnp.mean(jnp.abs(x) > 1.0))
    self.assertGreater(var[None], 0.85)
    self.assertGreater(tail[None], 0.25)                    # N(0, 1): 32 % beyond ±1
    self.assertLess(var[1.0], 0.6)
    self.assertEqual(tail[1.0], 0.0)

  def test_validation_refuses_a_clip_that_cuts_the_data(self):
    trans = lambda a: type("T", (), {"obs": np.zeros((3, OBS)), "actions": a})
    c = nav1d_config.get_config("dp,full,smoke")
    validation.check_clip(c, trans(np.array([[-1.0], [0.2], [1.0]])))   # minmax: inside ±1
    c.data.normalizer = "gaussian"
    with self.assertRaisesRegex(ValueError, r"clip_x0=1 cuts the normalised data.*actions "
                                            r"reach 2\.5"):
      validation.check_clip(c, trans(np.array([[-2.5], [0.1], [1.3]])))
    c.diffusion.clip_x0 = 0.0
    validation.check_clip(c, trans(np.array([[-2.5], [0.1], [1.3]])))
    # Diffuser diffuses the observations too.
    d = nav1d_config.get_config("diffuser,full,smoke")
    with self.assertRaisesRegex(ValueError, "obs reach 3"):
      validation.check_clip(d, type("T", (), {"obs": np.full((2, OBS), 3.0),
                                           "actions": np.zeros((2, ACT))}))

  def test_auto_clip_is_the_data_range(self):
    """MuJoCo (gaussian units) clips at the data's range: bounded, nothing cut."""
    c = mujoco_config.get_config("dp,hopper,ars")
    self.assertEqual(c.data.normalizer, "gaussian")
    self.assertEqual(c.diffusion.clip_x0, -1.0)
    trans = type("T", (), {"obs": np.full((3, OBS), 40.0),
                           "actions": np.array([[-2.5], [0.1], [1.3]])})
    r = validation.resolve_clip(c, trans)
    self.assertAlmostEqual(r.diffusion.clip_x0, 2.5, places=5)    # DP: the actions only
    self.assertEqual(c.diffusion.clip_x0, -1.0)                   # the input is not changed
    validation.check_clip(r, trans)
    with self.assertRaisesRegex(ValueError, "clip_x0=-1 \\(auto\\) is resolved"):
      builders.make_dmc(c, OBS, ACT)
    c.diffusion.clip_x0 = -2.0
    with self.assertRaisesRegex(ValueError, "diffusion.clip_x0=-2.0 is invalid"):
      validation.validate_config(c)


@functools.lru_cache(maxsize=None)
def setup(model="dp"):
  c = nav1d_config.get_config(f"{model},full,smoke")
  dmc = builders.make_dmc(c, OBS, ACT)
  params = dmc.init(jax.random.key(0))
  hist = jax.random.uniform(jax.random.key(3), (4, dmc.history, OBS), minval=-1, maxval=1)
  return c, dmc, params, hist


class DeployedSamplerTest(absltest.TestCase):
  """Defect 3: the policy PPO/REINFORCE optimise is the policy evaluated."""

  def test_deployed_sampler_is_the_rl_sampler(self):
    c, dmc, params, hist = setup()
    c = c.copy_and_resolve_references()
    c.align.rl.stochastic_scale, c.align.rl.min_std = 0.7, 0.05
    deployed = builders.deployed_dmc(c, dmc)
    x_T = jax.random.normal(jax.random.key(1), (4, dmc.horizon, ACT))
    cond = hist.reshape(4, -1)
    key = jax.random.key(2)
    out = deployed.sampling.gen.sample(params, key, x_T, cond)
    trained = deployed.sampling.gen.sample.replace(return_chain=True)(
        params, key, x_T, cond, **deployed.sampling.gen.stochastic)
    np.testing.assert_array_equal(out.x_0, trained.x_0)
    std = np.asarray(trained.chain.std)
    self.assertTrue(np.all(std[:-1] >= 0.05) and std[-1] == 0.0)  # floor; last step exact
    config_x0 = dmc.sampling.gen.sample(params, key, x_T, cond).x_0  # eta = 0
    self.assertGreater(float(jnp.max(jnp.abs(config_x0 - out.x_0))), 1e-3)
    # ``propose`` (what acting calls) samples with the deployed sampler too.
    p1 = deployed.propose(params, jax.random.key(3), hist, 2).actions
    p2 = dmc.propose(params, jax.random.key(3), hist, 2).actions
    self.assertGreater(float(jnp.max(jnp.abs(p1 - p2))), 1e-3)
    # deploy_sampler="config" keeps the configured sampler (and the job reports both).
    c.align.deploy_sampler = "config"
    same = builders.deployed_dmc(c, dmc).sampling.gen.sample(params, key, x_T, cond).x_0
    np.testing.assert_array_equal(same, config_x0)

  def test_the_q_gradient_default_deploys_the_chain_it_differentiates(self):
    """Nav1D's Diffuser aligns with the Q-gradient through the configured (eta = 0) chain:
    the deployed sampler is that chain, not PPO's stochastic one."""
    c, dmc, params, hist = setup("diffuser")
    self.assertEqual(c.align.rl.method, "qgrad")
    self.assertFalse(builders.uses_policy_gradient(c))
    deployed = builders.deployed_dmc(c, dmc)
    p1 = deployed.propose(params, jax.random.key(3), hist, 2).actions
    p2 = dmc.propose(params, jax.random.key(3), hist, 2).actions
    np.testing.assert_array_equal(p1, p2)
    c = c.copy_and_resolve_references()
    c.align.rl.method = "ppo"  # PPO on the same model deploys its stochastic chain
    p3 = builders.deployed_dmc(c, dmc).propose(params, jax.random.key(3), hist, 2).actions
    self.assertGreater(float(jnp.max(jnp.abs(p3 - p2))), 1e-4)

  def test_a_deterministic_rl_sampler_is_refused(self):
    c = nav1d_config.get_config("dp,full,smoke")
    c.align.rl.stochastic_scale = 0.0
    with self.assertRaisesRegex(ValueError, "rl.stochastic_scale=0.0 is invalid"):
      validation.validate_config(c)


class LossWeightsTest(absltest.TestCase):
  """Defect 4: DPO/SFT use Diffuser's first-action weight, as pretraining does."""

  def test_per_sample_errors_are_the_pretraining_loss(self):
    c, dmc, params, _ = setup("diffuser")
    w = dmc.sampling.loss_weights
    self.assertEqual(float(w[0, OBS]), c.model.action_weight)
    self.assertEqual(float(jnp.sum(w)), w.size - 1 + c.model.action_weight)
    x = jax.random.normal(jax.random.key(0), (1, dmc.horizon, OBS + ACT))
    key = jax.random.key(1)
    loss, _ = jax.jit(lambda p: dmc.sampling.gen.loss(p, key, x, None, weights=w))(params)
    errors = jax.jit(lambda p, w: base.sample_errors(dmc.sampling.gen.errors, p, key[None], x,
                                                     None, None, w))
    err, _ = errors(params, w)
    # sample_errors folds no key: it passes each sample's key, so one sample is the batch.
    np.testing.assert_allclose(err[0], loss, rtol=1e-5)
    plain, _ = errors(params, None)
    self.assertGreater(abs(float(err[0] - plain[0])), 1e-4)


def scale_denoiser(params, x_t, t, cond, cond_mask):
  return params["s"] * x_t


class DPOWeightingTest(parameterized.TestCase):
  """Defect 5: each weighting against its closed form at theta != ref."""

  @parameterized.parameters("constant", "snr", "min_snr", "sigmoid")
  def test_closed_form(self, weighting):
    sched = schedules.make_cosine_schedule(10)
    errors_fn = functools.partial(losses.diffusion_loss, denoise_fn=scale_denoiser,
                                  sched=sched, per_sample=True)
    x_w = jax.random.normal(jax.random.key(0), (64, 3))
    x_l = jax.random.normal(jax.random.key(1), (64, 3)) + 1.0
    keys = jax.random.split(jax.random.key(2), 64)
    th, ref, beta, gamma = {"s": jnp.float32(0.5)}, {"s": jnp.float32(0.2)}, 3.0, 5.0
    loss, _ = dpo.dpo_loss(th, ref, keys, x_w, x_l, errors_fn=errors_fn, beta=beta,
                           weighting=weighting)
    err = lambda p, x: base.sample_errors(errors_fn, p, keys, x, None, None)
    (e_w, lam), (e_l, _) = err(th, x_w), err(th, x_l)
    (r_w, _), (r_l, _) = err(ref, x_w), err(ref, x_l)
    lam = np.asarray(lam, np.float64)
    snr = np.exp(lam)
    w = {"constant": np.ones_like(lam), "snr": snr, "min_snr": np.minimum(snr, gamma) / snr,
         "sigmoid": 1.0 / (1.0 + np.exp(lam))}[weighting]
    margin = np.asarray((e_w - r_w) - (e_l - r_l), np.float64)
    expect = np.mean(np.log1p(np.exp(beta * w * margin)))   # -log sigmoid(-beta w margin)
    np.testing.assert_allclose(float(loss), expect, rtol=1e-4)
    self.assertGreater(abs(float(loss) - np.log(2.0)), 1e-3)

  def test_min_snr_and_sigmoid_favour_high_noise(self):
    lam = jnp.linspace(-8.0, 8.0, 33)
    for kind in ("min_snr", "sigmoid"):
      w = np.asarray(dpo.snr_weight(kind, lam))
      self.assertTrue(np.all(np.diff(w) <= 1e-7), kind)        # non-increasing in log-SNR
      self.assertGreater(w[0], 0.99)                            # ~1 at high noise
      self.assertLess(w[-1], 0.01)                              # small at low noise


class CreditAndTruncationTest(absltest.TestCase):
  """Defect 6: credit over the stochastic steps, and the last-K truncation of eq. 8."""

  def test_decreasing_credit_peaks_at_the_last_stochastic_step(self):
    active = jnp.array([True, True, True, True, False])[:, None]   # last step deterministic
    w = np.asarray(rl.credit_weights("decreasing", num_steps=5, decay=0.5, active=active))[:, 0]
    np.testing.assert_allclose(w / w[3], [0.125, 0.25, 0.5, 1.0, 0.0])
    np.testing.assert_allclose(w.sum(), 4.0, rtol=1e-6)
    u = np.asarray(rl.credit_weights("uniform", num_steps=5, active=active))[:, 0]
    np.testing.assert_allclose(u, [1, 1, 1, 1, 0])

  def test_last_k_counts_stochastic_steps_from_the_end(self):
    stoch = jnp.array([True, True, True, True, False])[:, None]
    np.testing.assert_array_equal(rl.active_steps(stoch, 2)[:, 0], [0, 0, 1, 1, 0])
    np.testing.assert_array_equal(rl.active_steps(stoch, 0)[:, 0], [1, 1, 1, 1, 0])

  def test_reinforce_last_k_equals_a_loss_on_those_steps_only(self):
    """Second implementation: REINFORCE with ``last_k = 1`` is the gradient of
    ``-mean(log pi_k A)`` at the last stochastic step ``k = S - 2`` alone."""
    _, dmc, params, hist = setup()
    sampling = dmc.sampling
    reward = lambda p, cp, x_0, h: x_0[:, 0, 0]
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)
    g = 2
    al = rl.make_policy_gradient_aligner(sampling, reward, tx, method="reinforce",
                                         num_samples=g, last_k=1)
    st = al.init(jax.random.key(4), params)
    st = st.replace(params=jax.jit(lambda t: jax.tree.map(lambda x: x + 0.05, t))(st.params))
    key = jax.random.key(5)
    new, _ = jax.jit(al.update)(st, params, None, {"hist": hist}, key)
    delta = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), new.params, st.params)

    sampler = sampling.gen.sample.replace(return_chain=True)
    knobs = dict(sampling.gen.stochastic)
    k = sampler.num_steps - 2

    @jax.jit  # the second implementation, compiled once (eager, it compiles op by op)
    def reference_grads(lora, params, hist, key):
      k_sample, _ = jax.random.split(key)
      rep, sid = base.repeat_contexts(hist, base.global_ids(hist.shape[0], None), g)
      p = jax.lax.stop_gradient(base.aligned_params(sampling, params, lora))
      smp = base.sample_contexts(sampling, sampler, p, base.per_sample_keys(k_sample, sid),
                                 rep, **knobs)
      adv = base.group_advantages(reward(p, None, smp.x_0, rep).reshape(-1, g),
                                  None).reshape(-1)

      def loss(lora):
        d = base.aligned_params(sampling, params, lora)
        lp, _ = jax.vmap(lambda xt, xtm1, c: sampler.step_log_prob(
            d, xt[None], xtm1[None], k, c[None], None, **knobs))(
                smp.chain.x_t[:, k], smp.chain.x_tm1[:, k], smp.cond)
        return -jnp.mean(lp[:, 0] * adv)
      return jax.grad(loss)(lora)
    grads = reference_grads(st.params, params, hist, key)
    for a, b in zip(jax.tree.leaves(delta), jax.tree.leaves(grads)):
      np.testing.assert_allclose(a, -b, rtol=2e-3, atol=1e-6)
    self.assertGreater(max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(grads)), 1e-6)


class TargetKLTest(absltest.TestCase):
  """PPO's early stop on the approximate KL from the sampling policy (``rl.target_kl``)."""

  def test_approx_kl_closed_form(self):
    lp = jnp.array([[0.1, -0.2, 0.3], [0.0, 0.5, -0.4]])
    old = jnp.array([[0.0, 0.0, 0.1], [0.2, 0.5, 0.0]])
    act = jnp.array([[1, 1, 0], [1, 1, 1]], bool)
    d = np.asarray(lp - old, np.float64)
    want = np.sum(((np.exp(d) - 1) - d) * np.asarray(act)) / 5
    np.testing.assert_allclose(rl.approx_kl(lp, old, act), want, rtol=1e-5)
    self.assertEqual(float(rl.approx_kl(old, old, act)), 0.0)
    self.assertGreater(float(rl.approx_kl(lp, old, act)), 0.0)

  def _update(self, tx, target_kl):
    _, dmc, params, hist = setup()
    reward = lambda p, cp, x_0, h: x_0[:, 0, 0]
    al = rl.make_policy_gradient_aligner(dmc.sampling, reward, tx, method="ppo",
                                         num_samples=2, epochs=2, step_groups=2,
                                         clip_eps=0.2, target_kl=target_kl)
    st = al.init(jax.random.key(4), params)
    new, m = jax.jit(al.update)(st, params, None, {"hist": hist}, jax.random.key(5))
    return st, new, m

  def test_a_tiny_target_keeps_only_the_first_step(self):
    """Second implementation: with a target nothing can stay under, the update is the first
    clipped step alone, i.e. PPO without early stopping whose learning rate is 0 after its
    first step."""
    sgd = optax.sgd(1.0)
    once = optax.sgd(optax.piecewise_constant_schedule(1.0, {1: 0.0}))
    st, stopped, m = self._update(sgd, 1e-12)
    _, reference, _ = self._update(once, 0.0)
    _, full, m_full = self._update(sgd, 0.0)
    for a, b in zip(jax.tree.leaves(stopped.params), jax.tree.leaves(reference.params)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                zip(jax.tree.leaves(stopped.params), jax.tree.leaves(st.params)))
    self.assertGreater(moved, 1e-6)                           # the first step was taken
    differ = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                 zip(jax.tree.leaves(full.params), jax.tree.leaves(stopped.params)))
    self.assertGreater(differ, 1e-6)                          # and the others were not
    np.testing.assert_allclose(m["kl_stopped"], 0.75)          # 3 of the 4 steps skipped
    self.assertGreater(float(m_full["approx_kl"]), 0.0)

  def test_a_loose_target_changes_nothing(self):
    sgd = optax.sgd(1.0)
    _, loose, m = self._update(sgd, 1e9)
    _, off, _ = self._update(sgd, 0.0)
    for a, b in zip(jax.tree.leaves(loose.params), jax.tree.leaves(off.params)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    self.assertEqual(float(m["kl_stopped"]), 0.0)

  def test_validation(self):
    c = nav1d_config.get_config("dp,full,smoke")
    c.align.rl.target_kl = -1.0
    with self.assertRaisesRegex(ValueError, "rl.target_kl"):
      validation.validate_config(c)


class PairedCollapseTest(absltest.TestCase):
  """Defect 7: a real drop is caught on the pairs even when Q's spread over states is large."""

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.values0 = rng.normal(0.0, 10.0, 256)               # Q spread across states: 10
    self.cfg = sequential.SchedulerConfig(min_chunks=1, max_chunks=10, patience=5)
    self.state = sequential.init_state(float(np.std(self.values0)))
    self.state, d = sequential.decide(self.cfg, self.state, reward=self.values0.mean(),
                                      loss=1.0, values=self.values0)
    self.noise = rng.normal(0.0, 0.05, 256)

  def test_a_paired_drop_rolls_back(self):
    after = self.values0 - 1.0 + self.noise                 # every context 1.0 worse
    _, d = sequential.decide(self.cfg, self.state, reward=after.mean(), loss=1.0, values=after)
    self.assertEqual(d["action"], "rollback")
    self.assertIn("paired SE", d["reason"])
    # The unpaired scale (the old test) misses it: 1.0 < 3 x 10.
    _, d = sequential.decide(self.cfg, self.state, reward=after.mean(), loss=1.0)
    self.assertEqual(d["action"], "continue")

  def test_noise_alone_does_not(self):
    after = self.values0 + self.noise
    _, d = sequential.decide(self.cfg, self.state, reward=after.mean(), loss=1.0, values=after)
    self.assertNotEqual(d["action"], "rollback")
    # A certain but negligible dip (0.1, 1 % of the spread, 30 paired SEs) is not a collapse.
    after = self.values0 - 0.1 + self.noise
    _, d = sequential.decide(self.cfg, self.state, reward=after.mean(), loss=1.0, values=after)
    self.assertNotEqual(d["action"], "rollback")

  def test_a_first_chunk_below_the_visits_start_rolls_back(self):
    """The visit's best starts at the reward it starts from: a first chunk that lowers it
    is a drop (before, the first chunk became the best whatever its value)."""
    fresh = sequential.init_state(float(np.std(self.values0)))
    after = self.values0 - 1.0 + self.noise
    _, d = sequential.decide(self.cfg, fresh, reward=after.mean(), loss=1.0, values=after)
    self.assertEqual(d["action"], "continue")               # no start: nothing to compare
    started = sequential.start_visit(fresh, self.values0.mean(), self.values0)
    new, d = sequential.decide(self.cfg, started, reward=after.mean(), loss=1.0, values=after)
    self.assertEqual(d["action"], "rollback")
    self.assertAlmostEqual(d["best_before"], self.values0.mean())
    self.assertEqual(new.best, started.best)               # still the start's reward
    up = self.values0 + 1.0 + self.noise
    new, d = sequential.decide(self.cfg, started, reward=up.mean(), loss=1.0, values=up)
    self.assertEqual((d["action"], d["reason"]), ("continue", "improving"))
    self.assertAlmostEqual(new.best, up.mean())
    with self.assertRaisesRegex(ValueError, "not finite"):
      sequential.start_visit(fresh, float("nan"))

  def test_the_first_good_chunk_does_not_count_towards_a_plateau(self):
    """A visit's first chunk dips a little below its start (within the drop margin), then
    the reward climbs slowly: with the default patience the visit must not stop after
    ``min_chunks`` on a "plateau" that began at the start (DD `full` RL stopped after 2
    chunks). A visit that truly does not move still ends after patience + 1 chunks."""
    cfg = sequential.SchedulerConfig(min_chunks=2, max_chunks=8, patience=2)
    v0 = self.values0
    started = sequential.start_visit(sequential.init_state(float(np.std(v0))), v0.mean(), v0)
    actions = []
    s = started
    for shift in (-0.2, 0.05, 1.0):             # dip, tiny gain (< tol x scale), real gain
      r = v0 + shift + self.noise
      s, d = sequential.decide(cfg, s, reward=r.mean(), loss=1.0, values=r)
      actions.append(d["action"])
    self.assertEqual(actions, ["continue", "continue", "continue"])
    self.assertEqual(d["reason"], "improving")
    s, actions = started, []
    for _ in range(3):
      r = v0 + self.noise
      s, d = sequential.decide(cfg, s, reward=r.mean(), loss=1.0, values=r)
      actions.append(d["action"])
    self.assertEqual(actions, ["continue", "continue", "advance"])
    self.assertIn("plateau", d["reason"])
    # After a rollback of the first chunk, the next good chunk is the visit's first good one.
    bad = v0 - 3.0 + self.noise
    s, d = sequential.decide(cfg, started, reward=bad.mean(), loss=1.0, values=bad)
    self.assertEqual(d["action"], "rollback")
    r = v0 - 0.2 + self.noise
    s, d = sequential.decide(cfg, s, reward=r.mean(), loss=1.0, values=r)
    self.assertEqual((d["action"], s.since_best), ("continue", 0))

  def test_a_gain_is_measured_in_paired_standard_errors(self):
    """A slow, certain climb (+0.06 a chunk on a Q spread of 10: 0.006 x scale, ~12 paired
    SEs) is a gain, not a plateau; a change inside the noise is not. Under the old rule
    (gain above tol x scale = 0.2) the climb read as a plateau after min_chunks."""
    cfg = sequential.SchedulerConfig(min_chunks=2, max_chunks=8, patience=2)
    v0 = self.values0
    rng = np.random.default_rng(1)
    s = sequential.start_visit(sequential.init_state(float(np.std(v0))), v0.mean(), v0)
    actions = []
    for k in range(1, 5):
      r = v0 + 0.06 * k + rng.normal(0.0, 0.05, 256)
      s, d = sequential.decide(cfg, s, reward=r.mean(), loss=1.0, values=r)
      actions.append(d["action"])
    self.assertEqual(actions, ["continue"] * 4)
    self.assertEqual((d["reason"], s.since_best), ("improving", 0))
    # Noise around the best: no gain, and the plateau names its unit.
    best = np.asarray(s.best_values)
    for _ in range(2):
      r = best + rng.normal(0.0, 0.05, 256)
      s, d = sequential.decide(cfg, s, reward=r.mean(), loss=1.0, values=r)
    self.assertEqual(d["action"], "advance")
    self.assertIn("2.0 x paired SE", d["reason"])
    with self.assertRaisesRegex(ValueError, "gain_se"):
      sequential.SchedulerConfig(gain_se=-1.0)
    c = nav1d_config.get_config("dp,full,smoke")
    c.align.gain_se = -1.0
    with self.assertRaisesRegex(ValueError, "align.gain_se"):
      validation.validate_config(c)

  def test_a_changed_critic_rescores_the_best(self):
    """Online fine-tuning changes the critic: the drop test must compare two policies under
    the new critic. A critic that now values every context 1.0 lower is not a drop of the
    policy once the best is re-scored; unrescored, it reads as a collapse."""
    started = sequential.start_visit(self.state, self.values0.mean(), self.values0)
    same_policy_new_critic = self.values0 - 1.0
    after = same_policy_new_critic + self.noise
    _, d = sequential.decide(self.cfg, started, reward=after.mean(), loss=1.0, values=after)
    self.assertEqual(d["action"], "rollback")                   # old scores: a false drop
    rescored = sequential.rescore_best(started, same_policy_new_critic)
    self.assertAlmostEqual(rescored.best, same_policy_new_critic.mean())
    _, d = sequential.decide(self.cfg, rescored, reward=after.mean(), loss=1.0, values=after)
    self.assertNotEqual(d["action"], "rollback")
    # ... and a real drop under the new critic is still seen
    worse = same_policy_new_critic - 1.0 + self.noise
    _, d = sequential.decide(self.cfg, rescored, reward=worse.mean(), loss=1.0, values=worse)
    self.assertEqual(d["action"], "rollback")
    self.assertIsNone(sequential.rescore_best(sequential.init_state(1.0), self.values0).best)

  def test_new_best_is_reported(self):
    started = sequential.start_visit(self.state, self.values0.mean(), self.values0)
    up = self.values0 + 1.0
    _, d = sequential.decide(self.cfg, started, reward=up.mean(), loss=1.0, values=up)
    self.assertTrue(d["new_best"])
    down = self.values0 - 0.01
    _, d = sequential.decide(self.cfg, started, reward=down.mean(), loss=1.0, values=down)
    self.assertFalse(d["new_best"])

  def test_best_values_survive_json(self):
    s = sequential.SchedulerState.from_json(self.state.to_json())
    self.assertEqual(s, self.state)
    self.assertLen(s.best_values, 256)


class SignTest(absltest.TestCase):
  """Defect 8: the comparisons whose direction matters."""

  def test_group_advantages(self):
    r = jnp.array([[1.0, 3.0], [10.0, 14.0]])
    adv = np.asarray(base.group_advantages(r, None))
    centred = np.array([[-1.0, 1.0], [-2.0, 2.0]])
    np.testing.assert_allclose(adv, centred / np.sqrt(np.mean(centred ** 2)), rtol=1e-5)
    self.assertTrue(np.all(adv[:, 1] > adv[:, 0]))           # the better sample is favoured
    one = np.asarray(base.group_advantages(jnp.array([[1.0], [3.0]]), None))
    np.testing.assert_allclose(one[:, 0], [-1.0, 1.0], rtol=1e-5)
    np.testing.assert_allclose(np.abs(base.group_advantages(r * 100, None, clip=0.5)), 0.5)

  def test_best_of_n_is_an_unbiased_gradient_of_the_expected_max(self):
    """Enumerating every pair of draws of a 3-armed categorical policy: the expected
    estimator ``sum_i grad log p(x_i) A_i`` equals ``grad E[max(r(x_1), r(x_2))]``."""
    import itertools
    r = jnp.array([0.0, 1.0, 3.0])
    logits = jnp.array([0.3, -0.2, 0.1])
    p = jax.nn.softmax(logits)
    exact = jax.grad(lambda l: sum(
        jax.nn.softmax(l)[a] * jax.nn.softmax(l)[b] * jnp.maximum(r[a], r[b])
        for a, b in itertools.product(range(3), repeat=2)))(logits)
    est = jnp.zeros(3)
    for a, b in itertools.product(range(3), repeat=2):
      adv = base.best_of_n_margins(r[jnp.array([[a, b]])])[0]
      glp = jax.grad(lambda l: jax.nn.log_softmax(l)[a] * adv[0] +
                     jax.nn.log_softmax(l)[b] * adv[1])(logits)
      est = est + p[a] * p[b] * glp
    np.testing.assert_allclose(est, exact, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(base.best_of_n_margins(jnp.array([[1.0, 3.0, 2.0]])),
                               [[0.0, 1.0, 0.0]])

  def test_cascade_keeps_only_improving_alternatives(self):
    best, keep = cascade.improving_targets(jnp.array([1.0, 5.0, 2.0]),
                                           jnp.array([[0.0, 3.0], [4.0, 1.0], [2.0, 2.0]]))
    np.testing.assert_array_equal(best, [1, 0, 0])
    np.testing.assert_array_equal(keep, [1.0, 0.0, 0.0])

  def test_dpo_step_prefers_the_winner(self):
    """One gradient step on the DPO loss lowers the winner's error relative to the loser's."""
    sched = schedules.make_cosine_schedule(10)
    errors_fn = functools.partial(losses.diffusion_loss, denoise_fn=scale_denoiser,
                                  sched=sched, per_sample=True)
    x_w = 0.3 * jax.random.normal(jax.random.key(0), (32, 3))
    x_l = 2.0 * jax.random.normal(jax.random.key(1), (32, 3))
    keys = jax.random.split(jax.random.key(2), 32)
    ref = {"s": jnp.float32(0.5)}
    f = lambda p: dpo.dpo_loss(p, ref, keys, x_w, x_l, errors_fn=errors_fn, beta=1.0)[0]
    g = jax.grad(f)(ref)
    th = {"s": ref["s"] - 0.05 * g["s"]}
    err = lambda p, x: jnp.mean(base.sample_errors(errors_fn, p, keys, x, None, None)[0])
    self.assertLess(float(err(th, x_w) - err(ref, x_w)), float(err(th, x_l) - err(ref, x_l)))


class EnsembleCriticTest(absltest.TestCase):

  def test_two_heads_are_the_twin_q(self):
    obs, act = jnp.ones((5, OBS)) * 0.3, jnp.linspace(-1, 1, 5)[:, None]
    twin = TwinQ((16, 16))
    tp = twin.init(jax.random.key(0), obs, act)["params"]
    ens = EnsembleQ((16, 16), num_heads=2)
    ep = ens.init(jax.random.key(1), obs, act)["params"]
    stacked = {"heads": jax.tree.map(lambda a, b: jnp.stack([a, b]), tp["q0"], tp["q1"])}
    self.assertEqual(jax.tree.structure(stacked), jax.tree.structure(ep))
    np.testing.assert_allclose(ens.apply({"params": stacked}, obs, act),
                               twin.apply({"params": tp}, obs, act), rtol=1e-5, atol=1e-6)
    self.assertEqual(EnsembleQ((8,), num_heads=7).init(
        jax.random.key(2), obs, act)["params"]["heads"]["Dense_0"]["kernel"].shape[0], 7)

  def test_lcb(self):
    qs = jnp.array([[1.0, 0.0], [3.0, 0.0], [5.0, 6.0]])
    np.testing.assert_allclose(sel.aggregate_heads(qs[:2], "lcb"), jnp.min(qs[:2], 0))
    np.testing.assert_allclose(sel.aggregate_heads(qs, "lcb", 2.0),
                               np.mean(qs, 0) - 2.0 * np.std(qs, 0), rtol=1e-6)

  def test_iql_update_with_ten_heads(self):
    c = nav1d_config.get_config("dp,full,smoke")
    c.critic.num_q = 10
    cr = builders.make_critic(c)
    q_mod, v_mod, q_fn, v_fn, update, tx_q, tx_v = (cr.q_module, cr.v_module, cr.q_fn, cr.v_fn,
                                                    cr.update, cr.tx_q, cr.tx_v)
    from dmc_jax.critics import iql
    from dmc_jax.data.episodes import Transitions
    st = iql.init_iql(jax.random.key(0), q_mod, v_mod, OBS, ACT, tx_q, tx_v)
    b = Transitions(jnp.ones((8, OBS)), jnp.zeros((8, ACT)), jnp.ones((8,)),
                    jnp.ones((8, OBS)), jnp.zeros((8,)))
    st, m = jax.jit(update)(st, b)
    self.assertEqual(q_fn(st.q.params, b.obs, b.actions).shape, (10, 8))
    self.assertEqual(float(m["nonfinite"]), 0.0)


class PlanRewardTest(absltest.TestCase):

  def _sampling(self, h=4):
    def decode(params, x):
      obs, act = x[..., :OBS], x[..., OBS:]
      return Proposal(act[:, :1], obs, act[:, :-1])
    return Sampling(None, None, None, None, decode)

  def test_plan_rewards_against_numpy(self):
    h, gamma = 4, 0.9
    x = jax.random.normal(jax.random.key(0), (3, h, OBS + ACT))
    hist = jax.random.normal(jax.random.key(1), (3, 1, OBS))
    q_fn = lambda p, o, a: jnp.stack([o[:, 0] + 2 * a[:, 0], o[:, 0] + 2 * a[:, 0] + 1.0])
    v_fn = lambda p, o: 0.5 * o[:, 0]
    xs, s0 = np.asarray(x), np.asarray(hist[:, -1])
    states = xs[:, :-1, :OBS].copy()
    states[:, 0] = s0
    q = states[..., 0] + 2 * xs[:, :-1, OBS]                 # min of the two heads
    v = 0.5 * xs[:, 1:, 0]
    disc = gamma ** np.arange(h - 1)
    kw = dict(q_fn=q_fn, v_fn=v_fn, discount=gamma)
    got = lambda kind: np.asarray(rewards.make_reward(self._sampling(), kind=kind, **kw)(
        None, (None, None), x, hist))
    np.testing.assert_allclose(got("first"), q[:, 0], rtol=1e-5)
    np.testing.assert_allclose(got("plan_q"), (q * disc).sum(1) / disc.sum(), rtol=1e-5)
    ret = (disc * (q - gamma * v)).sum(1) + gamma ** (h - 1) * v[:, -1]
    np.testing.assert_allclose(got("plan_return_v"), ret, rtol=1e-5)
    # The telescoped form: Q(s_0, a_0) + sum_{t >= 1} g^t (Q_t - V(s_t)).
    adv = q[:, 1:] - 0.5 * states[:, 1:, 0]
    np.testing.assert_allclose(ret, q[:, 0] + (disc[1:] * adv).sum(1), rtol=1e-5)

  def test_dynamics_term_penalises_incoherent_plans(self):
    norm = Normalizer(np.zeros(OBS, np.float32), np.ones(OBS, np.float32))
    anorm = Normalizer(np.zeros(ACT, np.float32), np.ones(ACT, np.float32))
    err = lambda o, a, n: jnp.abs(o[..., 0] + 0.1 * a[..., 0] - n[..., 0])
    q_fn = lambda p, o, a: jnp.zeros((2, o.shape[0]))
    r = rewards.make_reward(self._sampling(), q_fn, dynamics_error=err, dynamics_coef=10.0,
                            obs_norm=norm, act_norm=anorm)
    coherent = jnp.zeros((1, 4, OBS + ACT)).at[0, :, OBS].set(1.0)
    coherent = coherent.at[0, :, 0].set(0.1 * jnp.arange(4))
    broken = coherent.at[0, 2, 0].set(0.9)
    hist = jnp.zeros((1, 1, OBS))
    self.assertAlmostEqual(float(r(None, (None, None), coherent, hist)[0]), 0.0, places=5)
    self.assertLess(float(r(None, (None, None), broken, hist)[0]), -1.0)

  def test_config_checks(self):
    c = nav1d_config.get_config("dp,full,smoke")
    c.align.reward = "plan_q"
    c.model.execute_steps = 2
    with self.assertRaisesRegex(ValueError, "align.reward='plan_q' is invalid"):
      validation.validate_config(c)
    c = nav1d_config.get_config("dp,full,smoke")
    c.align.dynamics_coef = 1.0
    with self.assertRaisesRegex(ValueError, "align.dynamics_coef=1.0 is invalid"):
      validation.validate_config(c)


if __name__ == "__main__":
  absltest.main()
