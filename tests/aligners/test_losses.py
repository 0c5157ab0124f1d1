"""Aligner losses against hand computations and second implementations."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from dmc_jax.aligners import dpo, rl, sft
from dmc_jax.diffusion import losses, schedules


def scale_denoiser(params, x_t, t, cond, cond_mask):
  """``eps_hat = s * x_t``: simple enough to redo the DPO loss in numpy."""
  return params["s"] * x_t


class DPOTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.sched = schedules.make_cosine_schedule(10)
    self.x_w = jax.random.normal(jax.random.key(0), (16, 3))
    self.x_l = jax.random.normal(jax.random.key(1), (16, 3)) + 1.0
    self.errors_fn = functools.partial(losses.diffusion_loss, denoise_fn=scale_denoiser,
                                       sched=self.sched, per_sample=True)

  @parameterized.parameters("constant", "snr", "min_snr", "sigmoid")
  def test_log2_when_theta_equals_ref(self, weighting):
    p = {"s": jnp.float32(0.7)}
    loss, m = dpo.dpo_loss(p, p, jax.random.split(jax.random.key(2), 16), self.x_w, self.x_l,
                           errors_fn=self.errors_fn, beta=100.0, weighting=weighting)
    self.assertAlmostEqual(float(loss), np.log(2.0), places=6)
    self.assertEqual(float(m["dpo_margin"]), 0.0)

  def test_matches_numpy(self):
    theta, ref, beta = {"s": jnp.float32(0.5)}, {"s": jnp.float32(0.2)}, 3.0
    key = jax.random.key(3)
    keys = jax.random.split(key, 16)
    loss, _ = dpo.dpo_loss(theta, ref, keys, self.x_w, self.x_l, errors_fn=self.errors_fn,
                           beta=beta, weighting="snr")
    # Same draws as diffusion_loss, one sample per key: split into (t, eps, cond drop).
    a, s, eps = [], [], []
    for k in keys:
      k_t, k_eps, _ = jax.random.split(k, 3)
      _, alpha, sigma = losses.sample_time(k_t, self.sched, 1)
      a.append(float(alpha[0]))
      s.append(float(sigma[0]))
      eps.append(np.asarray(jax.random.normal(k_eps, (1, 3)))[0])
    a, s, eps = np.array(a)[:, None], np.array(s)[:, None], np.stack(eps)

    def err(scale, x):
      x_t = a * np.asarray(x) + s * eps
      return np.mean((eps - scale * x_t) ** 2, -1)

    margin = (err(0.5, self.x_w) - err(0.2, self.x_w)) - (err(0.5, self.x_l) - err(0.2, self.x_l))
    snr = (a[:, 0] / s[:, 0]) ** 2
    expected = np.mean(np.logaddexp(0.0, beta * snr * margin))  # -log sigmoid(-z)
    self.assertAlmostEqual(float(loss), float(expected), places=4)

  def test_swapping_winner_and_loser_flips_the_margin(self):
    theta, ref = {"s": jnp.float32(0.5)}, {"s": jnp.float32(0.2)}
    kw = dict(errors_fn=self.errors_fn, beta=2.0)
    keys = jax.random.split(jax.random.key(5), 16)
    _, m = dpo.dpo_loss(theta, ref, keys, self.x_w, self.x_l, **kw)
    _, m_swap = dpo.dpo_loss(theta, ref, keys, self.x_l, self.x_w, **kw)
    self.assertAlmostEqual(float(m["dpo_margin"]), -float(m_swap["dpo_margin"]), places=5)
    self.assertAlmostEqual(float(m["dpo_accuracy"] + m_swap["dpo_accuracy"]), 1.0, places=6)


class RLTest(absltest.TestCase):

  def test_reinforce_hand_value(self):
    lp = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    # sums over steps: [4, 6]; times A = [1, -1]: [4, -6]; -mean = 1.0
    self.assertAlmostEqual(float(rl.reinforce_loss(lp, jnp.array([1.0, -1.0]),
                                                   jnp.ones((2, 2)))), 1.0)

  def test_ppo_clip_hand_values(self):
    old = jnp.zeros((1, 2))
    new = jnp.full((1, 2), np.log(1.5))
    loss, m = rl.ppo_loss(new, old, jnp.array([1.0, -1.0]), jnp.ones((1, 2)), 0.2)
    # A = 1: min(1.5, 1.2) = 1.2; A = -1: min(-1.5, -1.2) = -1.5; -mean = 0.15
    self.assertAlmostEqual(float(loss), 0.15, places=5)
    self.assertAlmostEqual(float(m["clip_frac"]), 1.0)

  def test_ppo_ratio_is_one_at_old_params_and_matches_reinforce_gradient(self):
    w = jnp.array([0.3, -0.2])
    feats = jax.random.normal(jax.random.key(0), (3, 4, 2))
    logp = lambda w: feats @ w                                   # [S=3, B=4]
    adv = jnp.array([1.0, -0.5, 2.0, 0.1])
    credit = rl.credit_weights("decreasing", num_steps=3) * jnp.ones((3, 4))
    old = jax.lax.stop_gradient(logp(w))
    (loss, m), g_ppo = jax.value_and_grad(
        lambda w: rl.ppo_loss(logp(w), old, adv, credit), has_aux=True)(w)
    self.assertAlmostEqual(float(m["ratio_mean"]), 1.0, places=6)
    g_rf = jax.grad(lambda w: rl.reinforce_loss(logp(w), adv, credit))(w)
    np.testing.assert_allclose(g_ppo, g_rf, rtol=1e-5)

  def test_credit_weights(self):
    dec = np.asarray(rl.credit_weights("decreasing", num_steps=5, decay=0.5))
    np.testing.assert_allclose(dec.sum(0), 5.0, rtol=1e-6)
    self.assertTrue(np.all(np.diff(dec[:, 0]) > 0))             # more credit near z_0
    # A chain moving straight from z_T to z_0: every step agrees with z_T - z_0.
    z = jnp.linspace(1.0, 0.0, 5)[:, None, None] * jnp.array([[[1.0, 2.0]]])
    sim = rl.credit_weights("similarity", z[:-1], z[1:])
    np.testing.assert_allclose(sim, np.ones((4, 1)), rtol=1e-5)
    # A step that moves backwards gets no credit.
    zb = z.at[2].set(z[0])
    sim = np.asarray(rl.credit_weights("similarity", zb[:-1], zb[1:]))
    self.assertEqual(sim[1, 0], 0.0)
    with self.assertRaisesRegex(ValueError, "unknown credit 'linear'"):
      rl.credit_weights("linear", num_steps=3)

  def test_gaussian_kl_closed_form(self):
    mp = jnp.array([[[0.0, 1.0]], [[2.0, 0.0]]])
    mq = jnp.zeros_like(mp)
    kl = rl.gaussian_kl(mp, mq, jnp.array([1.0, 2.0]))
    # step 0: (0 + 1) / 2 = 0.5; step 1: 4 / (2 * 4) = 0.5
    np.testing.assert_allclose(kl, [[0.5], [0.5]])


class SFTTest(absltest.TestCase):

  def test_filter_keeps_exactly_the_expected_samples(self):
    rewards = jnp.array([5.0, 9.0, 1.0, 7.0, 8.0, 3.0])
    loglik = jnp.array([0.0, -9.0, 0.0, -1.0, 0.0, 0.0])
    keep, w = sft.select_for_sft(rewards, loglik, top_k=3, min_log_lik=-2.0)
    # Sample 1 (reward 9) fails the likelihood filter; the best eligible are 4 (8), 3 (7), 0 (5).
    np.testing.assert_array_equal(keep, [True, False, False, True, True, False])
    np.testing.assert_allclose(w.sum(), 1.0)
    keep, _ = sft.select_for_sft(rewards, loglik, top_k=10, min_log_lik=-0.5)
    np.testing.assert_array_equal(keep, [True, False, True, False, True, True])


if __name__ == "__main__":
  absltest.main()
