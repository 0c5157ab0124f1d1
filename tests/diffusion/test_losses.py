"""Losses against closed forms: with the exact denoiser of N(mu, s^2), the loss equals the
irreducible posterior variance of the target, E_t Var[target | x_t]."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from dmc_jax.diffusion import flow_matching, losses, schedules
from tests import oracles

MU, S = jnp.array([0.5, -0.3]), 0.6


class WeightedMSETest(absltest.TestCase):

  def test_hand_computed(self):
    pred = jnp.array([[1.0, 2.0], [0.0, 0.0]])
    tgt = jnp.zeros((2, 2))
    # errors 1, 4, 0, 0; weights (2, 1) per column -> 2, 4, 0, 0
    np.testing.assert_allclose(losses.weighted_mse(pred, tgt, jnp.array([2.0, 1.0])), 6 / 4)
    # mask keeps the first row only: (2 + 4) / 2
    np.testing.assert_allclose(
        losses.weighted_mse(pred, tgt, jnp.array([2.0, 1.0]), jnp.array([[1], [0]])), 3.0)


class OracleLossTest(parameterized.TestCase):

  @parameterized.parameters("eps", "x0", "v")
  def test_discrete_loss_is_posterior_variance(self, pred_type):
    sched = schedules.make_cosine_schedule(10)
    fn = oracles.gaussian_denoise_fn(sched, MU, S, pred_type)
    x0 = MU + S * jax.random.normal(jax.random.key(0), (200_000, 2))
    loss, _ = jax.jit(functools.partial(losses.diffusion_loss, denoise_fn=fn, sched=sched,
                                        pred_type=pred_type))(None, jax.random.key(1), x0)
    a2 = sched.alphas_cumprod.astype(np.float64)
    sg2 = 1 - a2
    d = a2 * S ** 2 + sg2
    # Var[eps|x_t] = a^2 s^2 / d; Var[x0|x_t] = s^2 sigma^2 / d; Var[v|x_t] = s^2 / d.
    var = {"eps": a2 * S ** 2 / d, "x0": S ** 2 * sg2 / d, "v": S ** 2 / d}[pred_type]
    np.testing.assert_allclose(float(loss), var.mean(), rtol=0.03)

  def test_flow_matching_loss_is_posterior_variance(self):
    fn = oracles.gaussian_velocity_fn(MU, S)
    x0 = MU + S * jax.random.normal(jax.random.key(0), (200_000, 2))
    loss, _ = jax.jit(functools.partial(flow_matching.flow_matching_loss, denoise_fn=fn))(
        None, jax.random.key(1), x0)
    # Var[eps - x0 | x_t] = s^2 / ((1 - t)^2 s^2 + t^2), averaged over t ~ U(0, 1).
    t = (np.arange(100_000) + 0.5) / 100_000
    expected = np.mean(S ** 2 / ((1 - t) ** 2 * S ** 2 + t ** 2))
    np.testing.assert_allclose(float(loss), expected, rtol=0.03)

  def test_continuous_vp_loss(self):
    vp = schedules.ContinuousVP()
    fn = oracles.gaussian_denoise_fn(vp, MU, S)
    x0 = MU + S * jax.random.normal(jax.random.key(0), (200_000, 2))
    loss, _ = jax.jit(functools.partial(losses.diffusion_loss, denoise_fn=fn, sched=vp,
                                        t_eps=1e-3))(None, jax.random.key(1), x0)
    t = 1e-3 + (1 - 1e-3) * (np.arange(100_000) + 0.5) / 100_000
    a, sg = (np.asarray(v, np.float64) for v in schedules.marginal(vp, jnp.asarray(t)))
    np.testing.assert_allclose(float(loss), np.mean(a ** 2 * S ** 2 / (a ** 2 * S ** 2 + sg ** 2)),
                               rtol=0.03)


class MaskingTest(absltest.TestCase):

  def test_inpainted_entries_are_imposed_and_excluded(self):
    sched = schedules.make_cosine_schedule(10)
    seen = {}

    def fn(params, x_t, t, cond, cond_mask=None):
      seen["x_t"] = x_t
      # Garbage on the imposed column; zero elsewhere.
      return jnp.stack([1e6 * jnp.ones_like(x_t[:, 0]), jnp.zeros_like(x_t[:, 1])], -1)

    x0 = jnp.arange(8.0).reshape(4, 2)
    mask = jnp.array([True, False])
    loss, _ = losses.diffusion_loss(None, jax.random.key(0), x0, denoise_fn=fn, sched=sched,
                                    inpaint_mask=mask)
    np.testing.assert_array_equal(seen["x_t"][:, 0], x0[:, 0])
    # Only column 1 counts: the loss is mean(eps[:, 1]^2), finite and far below the garbage.
    self.assertLess(float(loss), 20.0)

  def test_cond_dropout_mask(self):
    got = {}

    def fn(params, x_t, t, cond, cond_mask=None):
      got["m"] = cond_mask
      return jnp.zeros_like(x_t)

    sched = schedules.make_cosine_schedule(5)
    x0 = jnp.zeros((1000, 2))
    losses.diffusion_loss(None, jax.random.key(0), x0, jnp.ones((1000, 3)), denoise_fn=fn,
                          sched=sched, cond_drop_prob=0.25)
    np.testing.assert_allclose(float(1 - got["m"].mean()), 0.25, atol=0.04)


class ScheduleTest(parameterized.TestCase):

  @parameterized.parameters(
      (schedules.make_linear_schedule, (100,)), (schedules.make_cosine_schedule, (50,)),
      (schedules.make_vp_schedule, (40,)))
  def test_monotone_and_consistent(self, make, args):
    s = make(*args)
    ab = s.alphas_cumprod
    self.assertTrue(np.all(np.diff(ab) < 0))
    self.assertTrue(np.all(np.diff(s.log_snr) < 0))
    # float32 storage of betas near 0.999 leaves ~1e-5 relative error in 1 - beta.
    np.testing.assert_allclose(np.cumprod(1 - s.betas.astype(np.float64)), ab, rtol=1e-4)
    np.testing.assert_allclose(s.sqrt_alphas_cumprod ** 2 + s.sqrt_one_minus_alphas_cumprod ** 2,
                               1.0, rtol=1e-6)
    # Continuous extension meets the grid exactly.
    t = (np.arange(s.num_steps) + 1.0) / s.num_steps
    a, sg = schedules.marginal(s, jnp.asarray(t))
    np.testing.assert_allclose(a, s.sqrt_alphas_cumprod, rtol=1e-4)
    # The posterior q(x_{i-1} | x_i, x_0) has mean coefficients that reproduce x_0 when
    # x_i = sqrt(ab_i) x_0 (no noise): c1 + c2 sqrt(ab_i) = sqrt(ab_{i-1}).
    np.testing.assert_allclose(s.posterior_mean_coef1 + s.posterior_mean_coef2 *
                               s.sqrt_alphas_cumprod, np.sqrt(s.alphas_cumprod_prev), rtol=1e-4)
    self.assertEqual(float(s.posterior_variance[0]), 0.0)

  def test_vp_discretisation_matches_continuous(self):
    s = schedules.make_vp_schedule(1000)
    t = jnp.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(schedules.log_alpha_bar(s, t),
                               schedules.log_alpha_bar(schedules.ContinuousVP(), t), rtol=1e-3)
    # beta(t) of the discretised schedule approaches the continuous rate.
    np.testing.assert_allclose(schedules.beta(s, t), schedules.beta(schedules.ContinuousVP(), t),
                               rtol=1e-2)

  def test_bad_inputs(self):
    with self.assertRaisesRegex(ValueError, "positive integer"):
      schedules.make_cosine_schedule(0)
    with self.assertRaisesRegex(ValueError, r"\(0, 1\)"):
      schedules.schedule_from_betas([0.1, 1.5])


if __name__ == "__main__":
  absltest.main()
