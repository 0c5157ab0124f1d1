"""Samplers against closed forms: a Gaussian target has an exact denoiser (tests/oracles.py)."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from dmc_jax.diffusion import chain as chain_lib
from dmc_jax.diffusion import ddim, ddpm, flow_matching, schedules, sde
from dmc_jax.distributions import normal_log_prob
from tests import oracles

MU = jnp.array([0.7, -1.2, 0.0])
S = 0.4
N = 4096


def _moments(x):
  x = np.asarray(x)
  return x.mean(0), x.var(0)


def _samplers(pred_type="eps", **kw):
  # Step counts are fine enough for the discretisation error to sit well inside the
  # tolerance: with coarse steps, DDPM's posterior variance (which drops c1^2 Var[x0|x_t])
  # and deterministic DDIM (Cauchy-Schwarz) both under-shoot the variance, by design.
  lin = schedules.make_linear_schedule(1000)
  cos = schedules.make_cosine_schedule(200)
  vp = schedules.ContinuousVP()
  f = lambda sch: oracles.gaussian_denoise_fn(sch, MU, S, pred_type)
  return {
      "ddpm_linear": (ddpm.make_ddpm_sampler(f(lin), lin, pred_type=pred_type, **kw), {}),
      "ddim_eta0": (ddim.make_ddim_sampler(f(lin), lin, 100, pred_type=pred_type, **kw), {}),
      "ddim_eta1": (ddim.make_ddim_sampler(f(lin), lin, 500, pred_type=pred_type, **kw),
                    {"eta": 1.0}),
      "sde_vp": (sde.make_sde_sampler(f(vp), vp, 200, pred_type=pred_type, **kw), {}),
      "ode_vp": (sde.make_ode_sampler(f(vp), vp, 100, pred_type=pred_type, **kw), {}),
      "sde_discrete": (sde.make_sde_sampler(f(cos), cos, 200, pred_type=pred_type, **kw), {}),
      "flow_euler": (flow_matching.make_flow_sampler(oracles.gaussian_velocity_fn(MU, S), 100,
                                                     **kw), {}),
      "flow_stochastic": (flow_matching.make_flow_sampler(
          oracles.gaussian_velocity_fn(MU, S), 100, **kw), {"noise_scale": 1.0}),
  }


class GaussianOracleTest(parameterized.TestCase):
  """Each sampler, fed the exact denoiser of N(mu, s^2), must reproduce mu and s^2."""

  @parameterized.parameters("ddpm_linear", "ddim_eta0", "ddim_eta1", "sde_vp", "ode_vp",
                            "sde_discrete", "flow_euler", "flow_stochastic")
  def test_moments(self, name):
    sample, kw = _samplers()[name]
    k_T, k_chain = jax.random.split(jax.random.key(0))
    x_T = jax.random.normal(k_T, (N, 3))
    out = jax.jit(functools.partial(sample, **kw))(None, k_chain, x_T)
    mean, var = _moments(out.x_0)
    # Monte-Carlo error of the mean: s / sqrt(N) ~ 0.006; of the variance ~ s^2 sqrt(2/N) ~ 0.0035.
    np.testing.assert_allclose(mean, MU, atol=0.03)
    np.testing.assert_allclose(var, S ** 2 * np.ones(3), rtol=0.1)

  @parameterized.parameters("x0", "v")
  def test_other_parametrisations(self, pred_type):
    for name in ("ddpm_linear", "ddim_eta0", "sde_vp"):
      sample, kw = _samplers(pred_type)[name]
      x_T = jax.random.normal(jax.random.key(1), (N, 3))
      mean, var = _moments(jax.jit(sample)(None, jax.random.key(2), x_T).x_0)
      np.testing.assert_allclose(mean, MU, atol=0.03, err_msg=name)
      np.testing.assert_allclose(var, S ** 2 * np.ones(3), rtol=0.1, err_msg=name)


class InvariantTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.sched = schedules.make_cosine_schedule(20)
    self.fn = oracles.gaussian_denoise_fn(self.sched, MU, S)
    self.x_T = jax.random.normal(jax.random.key(3), (64, 3))

  def test_ddim_eta0_is_deterministic(self):
    sample = jax.jit(ddim.make_ddim_sampler(self.fn, self.sched, 10))
    a = sample(None, jax.random.key(0), self.x_T).x_0
    b = sample(None, jax.random.key(1), self.x_T).x_0
    np.testing.assert_array_equal(a, b)
    # ... while eta = 1 is not.
    c = sample(None, jax.random.key(1), self.x_T, eta=1.0).x_0
    self.assertGreater(float(jnp.abs(a - c).max()), 1e-3)

  def test_ddim_eta1_all_steps_equals_ddpm(self):
    """DDIM with eta=1 over every training step is DDPM (second implementation)."""
    a = ddim.make_ddim_sampler(self.fn, self.sched, 20)(None, jax.random.key(4), self.x_T,
                                                        eta=1.0).x_0
    b = ddpm.make_ddpm_sampler(self.fn, self.sched)(None, jax.random.key(4), self.x_T).x_0
    np.testing.assert_allclose(a, b, atol=2e-4)

  def test_one_step_chain_equals_single_transition(self):
    sample = ddim.make_ddim_sampler(self.fn, self.sched, timesteps=[7], return_chain=True)
    out = sample(None, jax.random.key(0), self.x_T, eta=0.5)
    transition = ddim.make_ddim_transition(self.fn, self.sched, np.array([7]), None, 0.5)
    mean, std = transition(None, self.x_T, 0)
    # One step from level 7 to clean: sigma = 0.5 * sqrt(1 - ab_7) * sqrt(1 - ab_7) ... is
    # only 0 because ab_j = 1, so the output is the transition mean exactly.
    self.assertEqual(float(std), 0.0)
    np.testing.assert_allclose(out.x_0, mean, atol=1e-6)
    np.testing.assert_allclose(out.chain.mean[0], mean, atol=1e-6)

  def test_ddim_rejects_more_steps_than_training(self):
    with self.assertRaisesRegex(ValueError, r"num_steps=21.*trained with 20"):
      ddim.make_ddim_sampler(self.fn, self.sched, 21)
    with self.assertRaisesRegex(ValueError, "strictly decreasing"):
      ddim.make_ddim_sampler(self.fn, self.sched, timesteps=[3, 5])

  def test_ddim_timesteps(self):
    np.testing.assert_array_equal(ddim.ddim_timesteps(10, 4), [9, 6, 3, 0])
    np.testing.assert_array_equal(ddim.ddim_timesteps(5, 5), [4, 3, 2, 1, 0])

  @parameterized.parameters("ddpm", "ddim", "sde", "flow")
  def test_chain_log_probs_match_direct_density(self, kind):
    if kind == "ddpm":
      sample = ddpm.make_ddpm_sampler(self.fn, self.sched, return_chain=True)
      kw = {}
    elif kind == "ddim":
      sample = ddim.make_ddim_sampler(self.fn, self.sched, 10, return_chain=True)
      kw = {"eta": 0.8}
    elif kind == "sde":
      sample = sde.make_sde_sampler(self.fn, self.sched, 10, return_chain=True)
      kw = {}
    else:
      sample = flow_matching.make_flow_sampler(oracles.gaussian_velocity_fn(MU, S), 10,
                                               return_chain=True)
      kw = {"noise_scale": 0.5}
    out = jax.jit(functools.partial(sample, **kw))(None, jax.random.key(5), self.x_T)
    c = out.chain
    steps = c.t.shape[0]
    chex.assert_shape(c.x_t, (steps, 64, 3))
    chex.assert_shape(c.log_prob, (steps, 64))
    # The chain is consistent: each step's input is the previous step's output.
    np.testing.assert_array_equal(c.x_t[1:], c.x_tm1[:-1])
    np.testing.assert_array_equal(c.x_tm1[-1], out.x_0)
    np.testing.assert_array_equal(c.x_t[0], self.x_T)
    std = np.asarray(c.std)
    self.assertTrue(np.all(std[:-1] > 0))
    self.assertEqual(std[-1], 0.0)  # every sampler ends deterministically
    # Direct density in numpy: sum_d -0.5 ((x - m) / s)^2 - log s - 0.5 log(2 pi).
    x, m = np.asarray(c.x_tm1, np.float64), np.asarray(c.mean, np.float64)
    s = std[:-1, None, None].astype(np.float64)
    direct = np.sum(-0.5 * ((x[:-1] - m[:-1]) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi),
                    -1)
    np.testing.assert_allclose(c.log_prob[:-1], direct, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(c.log_prob[-1], 0.0)

  def test_transition_log_prob_masks_free_entries(self):
    x = jnp.array([[0.3, -0.2], [1.0, 2.0]])
    mean = jnp.zeros_like(x)
    free = jnp.array([True, False])
    lp = chain_lib.transition_log_prob(x, mean, 0.5, free)
    np.testing.assert_allclose(lp, normal_log_prob(x[:, 0], 0.0, 0.5), rtol=1e-6)

  def test_jit_and_eager_agree(self):
    sample = ddim.make_ddim_sampler(self.fn, self.sched, 8, return_chain=True)
    eager = sample(None, jax.random.key(6), self.x_T, eta=0.3)
    jitted = jax.jit(sample)(None, jax.random.key(6), self.x_T, eta=0.3)
    chex.assert_trees_all_close(eager, jitted, rtol=1e-5, atol=1e-5)

  def test_sde_and_ode_on_a_discrete_schedule_stay_on_the_trained_times(self):
    # A network trained on T discrete levels has seen t in [1/T, 1] only. This denoiser is
    # the exact one there and NaN below, as an extrapolated network is undefined: the
    # samplers must never ask it below 1/T (the old t_eps = 1e-3 did) and still reproduce
    # the target's moments.
    sched = schedules.make_cosine_schedule(100)
    exact = oracles.gaussian_denoise_fn(sched, MU, S)

    def trained_range_only(params, x, t, cond=None, cond_mask=None):
      return jnp.where((t >= 1.0 / 100 - 1e-6)[:, None], exact(params, x, t, cond, cond_mask),
                       jnp.nan)

    x_T = jax.random.normal(jax.random.key(0), (N, 3))
    for make, steps in ((sde.make_sde_sampler, 200), (sde.make_ode_sampler, 100)):
      sample = make(trained_range_only, sched, steps, return_chain=True)
      self.assertAlmostEqual(float(sample.times.min()), 0.01, places=6)
      out = jax.jit(sample)(None, jax.random.key(1), x_T)
      mean, var = _moments(out.x_0)
      np.testing.assert_allclose(mean, MU, atol=0.03)
      np.testing.assert_allclose(var, S ** 2, rtol=0.1)
    # A continuous VP keeps Song et al.'s 1e-3.
    self.assertAlmostEqual(float(sde.make_sde_sampler(
        exact, schedules.ContinuousVP(), 10).times.min()), 1e-3, places=6)

  def test_sde_uses_its_noise_and_ode_does_not(self):
    s = jax.jit(sde.make_sde_sampler(self.fn, self.sched, 20))
    o = jax.jit(sde.make_ode_sampler(self.fn, self.sched, 20))
    np.testing.assert_array_equal(o(None, jax.random.key(0), self.x_T).x_0,
                                  o(None, jax.random.key(1), self.x_T).x_0)
    self.assertGreater(float(jnp.abs(s(None, jax.random.key(0), self.x_T).x_0 -
                                     s(None, jax.random.key(1), self.x_T).x_0).max()), 1e-2)


class InpaintTest(parameterized.TestCase):

  @parameterized.product(kind=["ddpm", "ddim", "sde", "flow"], mode=["clean", "repaint"])
  def test_inpainted_entries_exact(self, kind, mode):
    sched = schedules.make_cosine_schedule(20)
    fn = oracles.gaussian_denoise_fn(sched, MU, S)
    kw = dict(inpaint_mode=mode, return_chain=True)
    sample = {
        "ddpm": lambda: ddpm.make_ddpm_sampler(fn, sched, **kw),
        "ddim": lambda: ddim.make_ddim_sampler(fn, sched, 5, **kw),
        "sde": lambda: sde.make_sde_sampler(fn, sched, 10, **kw),
        "flow": lambda: flow_matching.make_flow_sampler(oracles.gaussian_velocity_fn(MU, S), 8,
                                                        **kw),
    }[kind]()
    x_T = jax.random.normal(jax.random.key(0), (32, 3))
    values = jnp.broadcast_to(jnp.array([5.0, 0.0, -3.0]), (32, 3))
    mask = jnp.array([True, False, True])
    out = jax.jit(sample)(None, jax.random.key(1), x_T, inpaint=chain_lib.Inpaint(mask, values))
    np.testing.assert_array_equal(out.x_0[:, 0], 5.0)
    np.testing.assert_array_equal(out.x_0[:, 2], -3.0)
    # The free entry is still sampled from the target (Gaussian oracle is factorised).
    self.assertGreater(float(out.x_0[:, 1].std()), 0.2)
    if mode == "clean":
      np.testing.assert_array_equal(out.chain.x_t[:, :, 0], 5.0)
    else:  # noisy copies early in the chain
      self.assertGreater(float(jnp.abs(out.chain.x_t[0, :, 0] - 5.0).max()), 0.1)


if __name__ == "__main__":
  absltest.main()
