"""The learned dynamics model against Nav1D's known one (a second implementation), and its
place in the alignment reward and the config checks."""
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from configs import metaworld as metaworld_config
from configs import nav1d as nav1d_config
from dmc_jax.data import episodes
from dmc_jax.data.episodes import fit_normalizer
from dmc_jax.envs import nav1d
from dmc_jax.models import dynamics
from dmc_jax.train import align as align_lib
from dmc_jax.train import validation


def _nav1d_transitions(key, n, params):
  """``n`` Nav1D transitions from uniform positions, times and actions (actions beyond the
  clip at ±1 included), through the env's own ``step``."""
  kp, kt, ka = jax.random.split(key, 3)
  pos = jax.random.uniform(kp, (n,), minval=-1.0, maxval=1.0)
  t = jax.random.randint(kt, (n,), 0, params.horizon)
  act = jax.random.uniform(ka, (n, 1), minval=-1.2, maxval=1.2)
  state = nav1d.Nav1DState(pos, t)
  obs = nav1d.observe(state, params.horizon)
  _, nxt, _, _ = jax.vmap(lambda s, a: nav1d.step(None, s, a, params))(state, act)
  return np.asarray(obs), np.asarray(act), np.asarray(nxt)


class LearnedDynamicsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.params = nav1d.make_params(0)
    obs, act, nxt = _nav1d_transitions(jax.random.key(0), 4096, cls.params)
    cls.obs_norm = fit_normalizer(np.concatenate([obs, nxt]), "minmax")
    cls.act_norm = fit_normalizer(act, "minmax")
    n = lambda x, norm: np.asarray(norm.normalize(x))
    cls.fit = dynamics.fit(jax.random.key(1), n(obs, cls.obs_norm), n(act, cls.act_norm),
                           n(nxt, cls.obs_norm), steps=3000, batch_size=256,
                           hidden=(128, 128))

  def test_held_out_error_is_far_below_the_static_prediction(self):
    self.assertLess(self.fit.val_error, 0.1 * self.fit.static_error)

  def test_error_agrees_with_the_known_model(self):
    """On fresh transitions: the learned error of the true next state is near 0, and a next
    position moved by ``d`` costs about ``|d|`` under both models (the known model checks
    the position only; the learned one sums every dimension, the others unchanged)."""
    obs, act, nxt = _nav1d_transitions(jax.random.key(2), 512, self.params)
    err = dynamics.make_error_fn(self.fit, self.obs_norm, self.act_norm)
    known = lambda o, a, n: nav1d.plan_dynamics_error(self.params, o, a, n)
    coherent = np.asarray(err(obs, act, nxt))
    self.assertLess(float(np.mean(coherent)), 0.02)
    np.testing.assert_allclose(np.asarray(known(obs, act, nxt)), 0.0, atol=1e-6)
    d = np.asarray(jax.random.uniform(jax.random.key(3), (512,), minval=-0.3, maxval=0.3))
    moved = nxt.copy()
    moved[:, 0] += d
    learned_moved = np.asarray(err(obs, act, moved))
    known_moved = np.asarray(known(obs, act, moved))
    np.testing.assert_allclose(known_moved, np.abs(d), atol=1e-6)
    self.assertLess(float(np.mean(np.abs(learned_moved - known_moved))), 0.02)
    # The ranking a penalty needs: a plan moved by more than half a step (0.05) costs more
    # than the true one (almost always: the model errs by ~0.01 on average, more at the walls).
    big = np.abs(d) > 0.05
    self.assertGreater(float(np.mean(learned_moved[big] > coherent[big])), 0.95)

  def test_fit_is_deterministic(self):
    obs = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    act = np.random.default_rng(1).normal(size=(64, 2)).astype(np.float32)
    nxt = obs + 0.1 * act.sum(-1, keepdims=True)
    a = dynamics.fit(jax.random.key(5), obs, act, nxt, steps=20, batch_size=16)
    b = dynamics.fit(jax.random.key(5), obs, act, nxt, steps=20, batch_size=16)
    c = dynamics.fit(jax.random.key(6), obs, act, nxt, steps=20, batch_size=16)
    same = jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a.params, b.params)
    self.assertTrue(all(jax.tree.leaves(same)))
    self.assertNotEqual(a.val_error, c.val_error)
    with self.assertRaisesRegex(ValueError, "at least 2 transitions"):
      dynamics.fit(jax.random.key(5), obs[:1], act[:1], nxt[:1], steps=2)


class DynamicsConfigTest(absltest.TestCase):

  def test_auto_is_known_on_nav1d_and_learned_elsewhere(self):
    nav = nav1d_config.get_config("diffuser,full,smoke")
    self.assertTrue(align_lib.known_dynamics(nav))
    nav.align.dynamics_model = "learned"
    self.assertFalse(align_lib.known_dynamics(nav))
    mw = metaworld_config.get_config("diffuser,button-press")
    self.assertFalse(align_lib.known_dynamics(mw))

  def test_config_checks(self):
    mw = metaworld_config.get_config("diffuser,button-press")
    mw.align.dynamics_coef = 1.0
    validation.validate_config(mw)  # auto -> learned: allowed on any task for a planner
    mw.align.dynamics_model = "known"
    with self.assertRaisesRegex(ValueError, "align.dynamics_model='known' is invalid"):
      validation.validate_config(mw)
    mw.align.dynamics_model = "physics"
    with self.assertRaisesRegex(ValueError, "align.dynamics_model='physics' is invalid"):
      validation.validate_config(mw)
    mw.align.dynamics_model = "learned"
    mw.align.dynamics_steps = 0
    with self.assertRaisesRegex(ValueError, "align.dynamics_steps=0 is invalid"):
      validation.validate_config(mw)
    dp = metaworld_config.get_config("dp,button-press")
    dp.align.dynamics_coef = 1.0
    with self.assertRaisesRegex(ValueError, "align.dynamics_coef=1.0 is invalid"):
      validation.validate_config(dp)

  def test_the_alignment_phase_fits_with_the_config_settings(self):
    """``align.fit_dynamics`` is ``fit`` with ``align.dynamics_steps`` and the critic's batch
    size, turned into the error function (the same numbers as calling both directly)."""
    c = nav1d_config.get_config("diffuser,full,smoke")
    c.align.dynamics_steps = 30
    params = nav1d.make_params(0)
    obs, act, nxt = _nav1d_transitions(jax.random.key(7), 256, params)
    on, an = fit_normalizer(np.concatenate([obs, nxt]), "minmax"), fit_normalizer(act, "minmax")
    trans_n = episodes.Transitions(on.normalize(obs), an.normalize(act), np.zeros(256),
                                   on.normalize(nxt), np.zeros(256))
    got = align_lib.fit_dynamics(c, trans_n, jax.random.key(8), on, an)(obs, act, nxt)
    want = dynamics.make_error_fn(dynamics.fit(
        jax.random.key(8), trans_n.obs, trans_n.actions, trans_n.next_obs, steps=30,
        batch_size=c.critic.batch_size), on, an)(obs, act, nxt)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    self.assertEqual(np.shape(got), (256,))

  def test_reward_needs_the_fitted_model(self):
    c = nav1d_config.get_config("diffuser,full,smoke")
    c.align.dynamics_model = "learned"
    with self.assertRaisesRegex(ValueError, "learned_dynamics"):
      align_lib.make_reward_fn(c, None, lambda *a: None, lambda *a: None)


if __name__ == "__main__":
  absltest.main()
