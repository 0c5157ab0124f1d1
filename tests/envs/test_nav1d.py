"""Nav1D: dynamics and reward against hand-worked values, the DP expert, the gymnasium face."""
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from dmc_jax.envs import registry
registry.register_all()
from dmc_jax.envs import nav1d


class Nav1DTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    cls.params = nav1d.make_params(task_seed=0, horizon=32, step_size=0.1)
    cls.values = jax.jit(nav1d.solve_values)(cls.params)

  def test_dynamics_hand_values(self):
    # 0.2 + 0.1 * (-0.5) = 0.15; 0.95 + 0.1 * 1 = 1.05 -> clipped to 1; a = 3 is clipped to 1.
    np.testing.assert_allclose(nav1d.dynamics(0.2, -0.5, 0.1), 0.15, atol=1e-7)
    np.testing.assert_allclose(nav1d.dynamics(0.95, 1.0, 0.1), 1.0)
    np.testing.assert_allclose(nav1d.dynamics(-0.3, 3.0, 0.1), -0.2, atol=1e-7)
    np.testing.assert_allclose(nav1d.dynamics(-0.97, -1.0, 0.1), -1.0)

  def test_reward_hand_values(self):
    p = self.params
    t = 5
    mu, sigma = float(p.mu[t + 1]), float(p.sigma[t + 1])
    # At the mean the scaled density is 1; one std away it is exp(-1/2) = 0.60653.
    np.testing.assert_allclose(nav1d.reward(p, t, mu), 1.0, rtol=1e-6)
    np.testing.assert_allclose(nav1d.reward(p, t, mu + sigma), np.exp(-0.5), rtol=1e-5)
    np.testing.assert_allclose(nav1d.reward(p, t, mu - 2 * sigma), np.exp(-2.0), rtol=1e-5)

  def test_step_and_observation(self):
    p = self.params
    state = nav1d.Nav1DState(jnp.float32(0.3), jnp.int32(7))
    new, obs, r, done = nav1d.step(None, state, jnp.array([0.5]), p)
    # t: 7 -> 8, phase 8 / 32 = 0.25: sin = 1, cos = 0; position 0.3 + 0.05.
    np.testing.assert_allclose(obs, [0.35, 0.25, 1.0, 0.0], atol=1e-6)
    self.assertEqual(int(new.t), 8)
    np.testing.assert_allclose(r, nav1d.reward(p, 7, 0.35), rtol=1e-5)
    self.assertFalse(bool(done))
    last = nav1d.Nav1DState(jnp.float32(0.0), jnp.int32(31))
    self.assertTrue(bool(nav1d.step(None, last, jnp.zeros(1), p)[3]))

  def test_reset_range_and_vmap_jit_match_eager(self):
    p = nav1d.dataset_params(self.params, "partial")
    keys = jax.random.split(jax.random.key(0), 256)
    states, obs = jax.jit(jax.vmap(nav1d.reset, (0, None)))(keys, p)
    self.assertTrue(np.all((np.asarray(states.pos) >= -1) & (np.asarray(states.pos) <= 0)))
    s0, o0 = nav1d.reset(keys[3], p)
    np.testing.assert_allclose(obs[3], o0)
    acts = jax.random.uniform(jax.random.key(1), (256, 1), minval=-1, maxval=1)
    batched = jax.jit(jax.vmap(nav1d.step, (None, 0, 0, None)))(None, states, acts, p)
    single = nav1d.step(None, jax.tree.map(lambda x: x[3], states), acts[3], p)
    for b, s in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
      np.testing.assert_allclose(b[3], s, rtol=1e-6)

  def test_dp_values_match_brute_force_on_a_short_task(self):
    """Second implementation: exhaustive search over the action grid for H = 2."""
    p = nav1d.make_params(task_seed=3, horizon=2, step_size=0.1)
    values = nav1d.solve_values(p, num_states=801, num_actions=81)
    acts = np.linspace(-1, 1, 81)
    for s in (-0.9, -0.2, 0.0, 0.45):
      s1 = np.asarray(nav1d.dynamics(s, acts, 0.1))
      r0 = np.asarray(nav1d.reward(p, 0, s1))
      s2 = np.asarray(nav1d.dynamics(s1[:, None], acts[None], 0.1))
      r1 = np.asarray(nav1d.reward(p, 1, s2))
      best = np.max(r0[:, None] + r1)
      v = np.interp(s, np.linspace(-1, 1, 801), np.asarray(values[0]))
      np.testing.assert_allclose(v, best, atol=2e-3)

  def test_expert_beats_random_and_nearly_attains_values(self):
    data = {kind: jax.jit(nav1d.collect_episodes, static_argnums=(2, 3))(
        jax.random.key(0), self.params, kind, 200, self.values) for kind in nav1d.DATASET_KINDS}
    ret = {k: float(np.mean(d["rewards"].sum(1))) for k, d in data.items()}
    self.assertGreater(ret["expert"], ret["full"] + 10)
    starts = np.asarray(data["expert"]["observations"][:, 0, 0])
    v0 = np.interp(starts, np.linspace(-1, 1, self.values.shape[1]), self.values[0])
    # The noisy expert loses a little to action noise, never gains over the optimum.
    self.assertLess(ret["expert"], v0.mean() + 0.05)
    self.assertGreater(ret["expert"], v0.mean() - 1.5)
    pos = np.asarray(data["partial"]["observations"][..., 0])
    self.assertTrue(np.all((pos >= -1) & (pos <= 1e-6)))
    np.testing.assert_array_equal(data["full"]["terminations"][:, -1], True)
    self.assertFalse(np.any(data["full"]["terminations"][:, :-1]))

  def test_optimal_return_is_what_the_greedy_policy_earns_from_each_start(self):
    """``optimal_return(values, pos)`` (Nav1D's 100 % in the normalised score) equals the
    return of the DP-greedy policy from that start, and no random policy beats it."""
    from dmc_jax.eval import rollout as rollout_lib
    p, v = self.params, self.values

    def greedy(params, cp, k, hist):
      obs = hist[:, -1]
      t = jnp.round(obs[:, 1] * p.horizon).astype(jnp.int32)
      return jax.vmap(lambda ti, s: nav1d.greedy_action(p, v, ti, s))(t, obs[:, 0])[:, None, None], {}

    def uniform(params, cp, k, hist):
      return jax.random.uniform(k, (hist.shape[0], 1, 1), minval=-1.0, maxval=1.0), {}

    runs = {name: jax.jit(rollout_lib.make_rollout(nav1d.reset, nav1d.step, p, max_steps=32,
                                                  act_fn=fn), static_argnums=3)
            for name, fn in (("greedy", greedy), ("uniform", uniform))}
    out = runs["greedy"](None, None, jax.random.key(3), 16)
    starts = out["obs"][:, 0, 0]
    self.assertGreater(float(np.ptp(np.asarray(starts))), 0.5)  # distinct starts
    opt = np.asarray(nav1d.optimal_return(v, starts))
    self.assertEqual(opt.shape, (16,))
    np.testing.assert_allclose(np.asarray(out["returns"]), opt, rtol=0.01)
    # The value at a start beats every other start's value at some start (it is per start).
    self.assertGreater(float(np.ptp(opt)), 0.5)
    rand = runs["uniform"](None, None, jax.random.key(3), 16)
    np.testing.assert_allclose(rand["obs"][:, 0, 0], starts)  # the same starts
    self.assertTrue(np.all(np.asarray(rand["returns"]) < opt))

  @parameterized.parameters("full", "partial", "expert")
  def test_behaviour_density_integrates_to_one(self, kind):
    grid = jnp.linspace(-1.5, 1.5, 30001)
    for pos in (-0.95, -0.5, -0.02):
      dens = jax.vmap(lambda a: nav1d.behaviour_density(kind, self.params, self.values, 4,
                                                        jnp.float32(pos), a))(grid)
      mass = float(jnp.trapezoid(dens, grid))
      if kind == "expert":  # the clip at +-1 moves the tails into point masses
        a_star = float(nav1d.greedy_action(self.params, self.values, 4, pos))
        from math import erf, sqrt
        cdf = lambda x: 0.5 * (1 + erf((x - a_star) / (nav1d.EXPERT_NOISE * sqrt(2))))
        self.assertAlmostEqual(mass, cdf(1.5) - cdf(-1.5), places=3)
      else:
        self.assertAlmostEqual(mass, 1.0, places=3)

  def test_gymnasium_env_matches_pure_env(self):
    env = gym.make("dmc_jax/Nav1D-v0", task_seed=0, horizon=32, step_size=0.1)
    self.assertEqual(env.observation_space.shape, (4,))
    self.assertEqual(env.action_space.shape, (1,))
    obs, _ = env.reset(seed=7)
    state, obs_pure = nav1d.reset(jax.random.key(7), self.params)
    np.testing.assert_allclose(obs, obs_pure)
    acts = np.asarray(jax.random.uniform(jax.random.key(2), (32, 1), minval=-1, maxval=1))
    total, total_pure = 0.0, 0.0
    for t in range(32):
      obs, r, term, trunc, _ = env.step(acts[t])
      state, obs_pure, r_pure, done = nav1d.step(None, state, acts[t], self.params)
      np.testing.assert_allclose(obs, obs_pure, rtol=1e-6)
      total += r
      total_pure += float(r_pure)
      self.assertEqual(term, bool(done))
      self.assertFalse(trunc)
    self.assertTrue(term)
    self.assertAlmostEqual(total, total_pure, places=5)

  def test_bad_params(self):
    with self.assertRaisesRegex(ValueError, "step_size"):
      nav1d.make_params(step_size=0.0)
    with self.assertRaisesRegex(ValueError, "unknown Nav1D dataset kind 'medium'"):
      nav1d.collect_episodes(jax.random.key(0), self.params, "medium", 2, self.values)


if __name__ == "__main__":
  absltest.main()
