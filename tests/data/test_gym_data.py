"""MetaWorld and gymnasium MuJoCo datasets: seeded envs, scripted success, Minari round trips,
ARS, and the success / normalised-score plumbing of the gymnasium roll-out."""
import gymnasium as gym
import jax
import minari
import numpy as np
from absl.testing import absltest

from dmc_jax.envs import registry
registry.register_all()
from dmc_jax.data import gym_data, minari_io
from dmc_jax.envs import metaworld as mw_env
from dmc_jax.eval import gym_rollout
from dmc_jax.eval import evaluators


class MetaWorldEnvTest(absltest.TestCase):

  def test_reset_seed_names_one_task_variation(self):
    env = gym.make(mw_env.ENV_ID, task="button-press", max_episode_steps=20)
    a, _ = env.reset(seed=3)
    b, _ = env.reset(seed=4)
    c, _ = env.reset(seed=3)
    np.testing.assert_array_equal(a, c)
    self.assertGreater(np.abs(a[36:39] - b[36:39]).max(), 1e-3)  # another goal position
    self.assertEqual(a.shape, (39,))
    self.assertEqual(a.dtype, np.float32)

  def test_scripted_policy_succeeds_and_random_does_not(self):
    """Through the evaluation loop: the scripted expert solves every variation within the
    episode; uniform random actions solve none; the loop reports both."""
    pi = mw_env.scripted_policy("button-press")
    make = lambda: gym.make(mw_env.ENV_ID, task="button-press", max_episode_steps=100)
    expert = lambda k, h: np.stack([pi(o) for o in np.asarray(h)[:, -1]])[:, None]
    out = gym_rollout.rollout_gym(make, expert, jax.random.key(0), num_episodes=3,
                                  max_steps=100)
    np.testing.assert_array_equal(out["success"], 1.0)
    np.testing.assert_array_equal(out["lengths"], 100)
    rand = lambda k, h: np.asarray(jax.random.uniform(k, (np.shape(h)[0], 1, 4), minval=-1,
                                                      maxval=1))
    out = gym_rollout.rollout_gym(make, rand, jax.random.key(0), num_episodes=3,
                                  max_steps=100)
    np.testing.assert_array_equal(out["success"], 0.0)

  def test_unknown_task_is_a_clear_error(self):
    with self.assertRaisesRegex(ValueError, r"unknown MetaWorld task 'button-pres'.*"
                                            r"button-press"):
      mw_env.check_task("button-pres")
    with self.assertRaisesRegex(ValueError, r"unknown MetaWorld quality 'okay'"):
      gym_data.check_dataset_id("dmc_jax/metaworld/drawer-open/okay-v0")
    with self.assertRaisesRegex(ValueError, r"max_episode_steps=600"):
      mw_env.MetaWorldEnv("drawer-open", max_episode_steps=600)


class DatasetTest(absltest.TestCase):

  def test_metaworld_dataset_round_trip(self):
    name = "dmc_jax/metaworld/drawer-open/expert-v0"
    ds, success = gym_data.make_metaworld_dataset("drawer-open", "expert", num_episodes=2,
                                                  max_episode_steps=12, seed=5,
                                                  overwrite=True, name=name)
    eps, loaded = minari_io.load_episodes(name, (39,), (4,))
    self.assertEqual(eps.observations.shape, (2, 13, 39))
    self.assertEqual(eps.actions.shape, (2, 12, 4))
    np.testing.assert_array_equal(eps.lengths, 12)
    self.assertLessEqual(np.abs(eps.actions).max(), 1.0)
    self.assertEqual(success.shape, (2,))
    # The stored env recovers with its kwargs and replays the first transition exactly.
    env = loaded.recover_environment()
    self.assertEqual(env.spec.kwargs["task"], "drawer-open")
    obs, _ = env.reset(seed=5 * 100003)
    np.testing.assert_allclose(obs, eps.observations[0, 0], rtol=1e-6)
    nxt, r, *_ = env.step(eps.actions[0, 0])
    np.testing.assert_allclose(nxt, eps.observations[0, 1], rtol=1e-5, atol=1e-6)
    self.assertAlmostEqual(r, float(eps.rewards[0, 0]), places=4)
    # Same seed, same data.
    again, _ = gym_data.collect(env, mw_env.scripted_policy("drawer-open"), 1, seed=5,
                                quality=gym_data.METAWORLD_QUALITIES["expert"])
    np.testing.assert_allclose(again[0]["actions"], eps.actions[0], rtol=1e-6)
    # The main job reuses it only at the size its config asks for.
    self.assertEqual(gym_data.ensure_dataset(name, num_episodes=2, seed=0), name)
    with self.assertRaisesRegex(ValueError, r"holds 2 episodes .* data.num_episodes=200.*"
                                            r"make_metaworld_data --tasks=drawer-open "
                                            r"--qualities=expert --num_episodes=200"):
      gym_data.ensure_dataset(name, num_episodes=200, seed=0)

  def test_mujoco_dataset_round_trip_and_normalised_score(self):
    name = "dmc_jax/hopper/ars-v0"
    ds = gym_data.make_mujoco_dataset("hopper", "ars", num_episodes=2, max_episode_steps=25,
                                      ars_iterations=1, overwrite=True, name=name)
    eps, loaded = minari_io.load_episodes(name, (11,), (3,))
    self.assertEqual(eps.observations.shape[-1], 11)
    self.assertTrue(np.all(eps.lengths <= 25))
    lo, hi = gym_data.D4RL_REF_SCORES["hopper"]
    ret = eps.returns()
    expected = 100 * (ret - lo) / (hi - lo)
    np.testing.assert_allclose(100 * minari.get_normalized_score(loaded, ret), expected)
    np.testing.assert_allclose([evaluators.normalized_score(r, (lo, hi)) for r in ret], expected)

  def test_missing_generated_dataset_says_which_script_makes_it(self):
    with self.assertRaisesRegex(FileNotFoundError, r"launch.make_metaworld_data "
                                                   r"--tasks=sweep-into --qualities=random"):
      minari_io.open_dataset("dmc_jax/metaworld/sweep-into/random-v0")
    with self.assertRaisesRegex(FileNotFoundError, r"launch.make_mujoco_data --envs=walker2d"):
      minari_io.open_dataset("dmc_jax/walker2d/ars-v0")

  def test_quality_perturbations(self):
    env = gym.make(mw_env.ENV_ID, task="plate-slide", max_episode_steps=5)
    fixed = lambda o: np.full(4, 0.3)
    eps, _ = gym_data.collect(env, fixed, 2, seed=0, quality=gym_data.Quality(0.0, 0.0, ""))
    np.testing.assert_allclose(np.concatenate([e["actions"] for e in eps]), 0.3, rtol=1e-6)
    eps, _ = gym_data.collect(env, fixed, 4, seed=0, quality=gym_data.Quality(0.0, 1.0, ""))
    acts = np.concatenate([e["actions"] for e in eps])
    self.assertFalse(np.any(np.isclose(acts, 0.3)))
    self.assertTrue(np.all(np.abs(acts) <= 1))

  def test_ars_improves_a_linear_task(self):
    """On a task whose best linear policy is known (a = W o), ARS raises the return."""

    class Track(gym.Env):
      observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
      action_space = gym.spaces.Box(-1, 1, (1,), np.float32)
      w = np.array([[0.5, -0.3]])

      def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.o = 0, self.np_random.normal(size=2).astype(np.float32) * 0.5
        return self.o, {}

      def step(self, a):
        r = -float(np.sum((a - self.w @ self.o) ** 2))
        self.t += 1
        self.o = self.np_random.normal(size=2).astype(np.float32) * 0.5
        return self.o, r, False, self.t >= 20, {}

    _, hist = gym_data.train_ars(Track(), iterations=30, max_steps=20, step_size=0.05,
                                 explore=0.05, seed=0)
    self.assertGreater(np.mean(hist[-5:]), 0.5 * hist[0])  # returns are negative
    self.assertLess(hist[0], -0.5)


if __name__ == "__main__":
  absltest.main()
