"""jit roll-outs against the gymnasium vector loop, action queues, and coherency scores."""
import functools

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from dmc_jax.envs import registry
registry.register_all()
from dmc_jax.envs import nav1d
from dmc_jax.eval import coherency, gym_rollout
from dmc_jax.eval import rollout as rollout_lib


class RolloutTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    cls.params = nav1d.make_params(0, 32, 0.1, start_low=0.3, start_high=0.3)
    cls.values = jax.jit(nav1d.solve_values)(cls.params)

  def greedy(self, hist):
    obs = hist[:, -1]
    t = jnp.round(obs[:, 1] * 32).astype(jnp.int32)
    a = jax.vmap(lambda ti, s: nav1d.greedy_action(self.params, self.values, ti, s))(
        t, obs[:, 0])
    return a[:, None, None]

  def test_jit_rollout_equals_gymnasium_vector_loop(self):
    """Second implementation: the same deterministic policy through SyncVectorEnv."""
    act = lambda p, c, k, h: (self.greedy(h), {})
    run = rollout_lib.make_rollout(nav1d.reset, nav1d.step, self.params, max_steps=32,
                                   act_fn=act)
    out = jax.jit(run, static_argnums=3)(None, None, jax.random.key(0), 4)
    make_env = lambda: gym.make("dmc_jax/Nav1D-v0", start_low=0.3, start_high=0.3)
    ref = gym_rollout.rollout_gym(make_env, lambda k, h: self.greedy(jnp.asarray(h)),
                                  jax.random.key(0), num_episodes=4, max_steps=40)
    np.testing.assert_allclose(out["returns"], ref["returns"], rtol=1e-5)
    np.testing.assert_allclose(out["obs"], ref["obs"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ref["lengths"], 32)
    # The recorded transitions: rewards as the pure roll-out's, next_obs the following
    # observation, and at the end the final one (not the auto-reset start, which is back
    # at 0.3 with time 0).
    np.testing.assert_allclose(ref["rewards"][:, :32], out["rewards"][:, :32], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(ref["next_obs"][:, :31], ref["obs"][:, 1:32])
    final = ref["next_obs"][:, 31]
    np.testing.assert_allclose(final[:, 1], 1.0, atol=1e-6)  # time feature at the horizon
    np.testing.assert_allclose(final[:, 0], ref["obs"][:, 31, 0] + 0.1 * ref["actions"][:, 31, 0],
                               atol=1e-5)
    # Nav1D is a finite-horizon task (time is in the observation): terminal at its last step.
    np.testing.assert_array_equal(ref["terminated"][:, :32],
                                  np.broadcast_to(np.arange(32) == 31, (4, 32)))
    # The DP-greedy policy attains the DP value of the start state.
    v0 = np.interp(0.3, np.linspace(-1, 1, self.values.shape[1]), self.values[0])
    self.assertAlmostEqual(float(out["returns"][0]), float(v0), delta=0.05)

  def test_gym_loop_executes_actions_inside_the_action_space(self):
    """A sampler without a clip can propose actions off the Box (gaussian units): the loop
    executes (and records) them clipped to the env's bounds, as Nav1D's own step does."""
    make_env = lambda: gym.make("dmc_jax/Nav1D-v0", start_low=0.3, start_high=0.3)
    far = gym_rollout.rollout_gym(make_env, lambda k, h: np.full((2, 1, 1), 7.0), jax.random.key(0),
                                  num_episodes=2, max_steps=32)
    edge = gym_rollout.rollout_gym(make_env, lambda k, h: np.full((2, 1, 1), 1.0), jax.random.key(0),
                                   num_episodes=2, max_steps=32)
    np.testing.assert_array_equal(far["actions"], 1.0)
    np.testing.assert_allclose(far["returns"], edge["returns"])

  def test_action_queue_and_alive_mask(self):
    calls = []

    def act(p, c, k, h):
      # Actions encode the step at which the plan was made (from the observed time).
      t0 = h[:, -1, 1] * 32
      seq = 0.01 * (t0[:, None] + jnp.arange(3)[None])
      return seq[..., None], {"t0": t0}

    run = rollout_lib.make_rollout(nav1d.reset, nav1d.step, self.params, max_steps=36,
                                   act_fn=act, execute_steps=3)
    out = jax.jit(run, static_argnums=3)(None, None, jax.random.key(0), 2)
    np.testing.assert_array_equal(out["replanned"], np.arange(36) % 3 == 0)
    # At step t the executed action is 0.01 * t: plan made at t - t % 3, index t % 3.
    np.testing.assert_allclose(out["actions"][0, :32, 0], 0.01 * np.arange(32), atol=1e-6)
    np.testing.assert_array_equal(out["alive"][0], np.arange(36) < 32)
    np.testing.assert_array_equal(out["rewards"][:, 32:], 0.0)
    np.testing.assert_allclose(out["returns"], out["rewards"].sum(1), rtol=1e-6)


class CoherencyTest(absltest.TestCase):

  def test_plan_coherency(self):
    params = nav1d.make_params(0, 32, 0.1)
    err = functools.partial(nav1d.plan_dynamics_error, params)
    acts = jax.random.uniform(jax.random.key(0), (5, 7, 1), minval=-1, maxval=1)
    pos = [jnp.full((5,), -0.2)]
    for j in range(7):
      pos.append(nav1d.dynamics(pos[-1], acts[:, j, 0], 0.1))
    plan = jnp.stack(pos, 1)[..., None] * jnp.array([1.0, 0, 0, 0])
    share, mean_err = coherency.plan_coherency(err, plan, acts, tol=0.01)
    self.assertAlmostEqual(float(share), 1.0)
    self.assertAlmostEqual(float(mean_err), 0.0, places=6)
    # Shift the second planned state of every plan by 0.05: 2 of 7 transitions break.
    bad = plan.at[:, 1, 0].add(0.05)
    share, mean_err = coherency.plan_coherency(err, bad, acts, tol=0.01)
    self.assertAlmostEqual(float(share), 5 / 7, places=5)
    self.assertAlmostEqual(float(mean_err), 2 * 0.05 / 7, places=5)
    weights = jnp.array([1, 1, 0, 0, 0], bool)
    share, _ = coherency.plan_coherency(err, plan.at[2:, 1, 0].add(0.05), acts, 0.01, weights)
    self.assertAlmostEqual(float(share), 1.0)

  def test_policy_coherency_of_uniform_behaviour(self):
    params = nav1d.make_params(0, 32, 0.1)
    dens = lambda t, o, a: nav1d.behaviour_density("full", params, None, t, o[..., 0], a[..., 0])
    obs = jnp.zeros((3, 4, 4))
    acts = jnp.array([0.5, -0.2, 1.5, 0.0])[None, :, None] * jnp.ones((3, 1, 1))
    alive = jnp.ones((3, 4), bool)
    # densities 0.5, 0.5, 0 (outside [-1, 1]), 0.5 -> mean 0.375
    self.assertAlmostEqual(float(coherency.policy_coherency(dens, None, obs, acts, alive)), 0.375)


if __name__ == "__main__":
  absltest.main()
