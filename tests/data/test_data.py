"""Minari round-trip, validation errors, transitions, segments and normalisation."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from dmc_jax.data import episodes as ep_lib
from dmc_jax.data import minari_io, nav1d_data
from dmc_jax.envs import nav1d


def _episodes(n=3, length=5, obs_dim=4, act_dim=1, seed=0):
  rng = np.random.default_rng(seed)
  return [{"observations": rng.normal(size=(length + 1, obs_dim)).astype(np.float32),
           "actions": rng.uniform(-1, 1, (length, act_dim)).astype(np.float32),
           "rewards": rng.normal(size=length), "terminations": np.arange(length) == length - 1,
           "truncations": np.zeros(length, bool)} for _ in range(n)]


class MinariRoundTripTest(absltest.TestCase):

  def test_nav1d_dataset_round_trip(self):
    name = "dmc_jax/nav1d/roundtrip-v0"
    ds = nav1d_data.make_dataset("expert", num_episodes=6, seed=3, overwrite=True, name=name)
    self.assertEqual(ds.total_episodes, 6)
    params = nav1d.make_params(0, 32, 0.1)
    direct = jax.jit(nav1d.collect_episodes, static_argnums=(2, 3))(
        jax.random.key(3), params, "expert", 6)
    for source in (name, os.path.join(minari_io.datasets_root(), name)):
      eps, loaded = minari_io.load_episodes(source, (4,), (1,))
      np.testing.assert_allclose(eps.observations, direct["observations"], rtol=1e-6)
      np.testing.assert_allclose(eps.actions, direct["actions"], rtol=1e-6)
      np.testing.assert_allclose(eps.rewards, direct["rewards"], rtol=1e-6)
      np.testing.assert_array_equal(eps.terminals, direct["terminations"])
      np.testing.assert_array_equal(eps.lengths, 32)
      self.assertEqual(loaded.spec.env_spec.kwargs["task_seed"], 0)
    with self.assertRaisesRegex(FileExistsError, "already exists"):
      nav1d_data.make_dataset("expert", num_episodes=2, name=name)

  def test_missing_dataset_says_how_to_get_it(self):
    with self.assertRaisesRegex(FileNotFoundError,
                                r"'dmc_jax/nav1d/medium-v0' is not in MINARI_DATASETS_PATH.*"
                                r"launch.make_nav1d_data"):
      minari_io.load_episodes("dmc_jax/nav1d/medium-v0")
    with self.assertRaisesRegex(FileNotFoundError, r"minari download mujoco/hopper/medium-v0"):
      minari_io.load_episodes("mujoco/hopper/medium-v0")

  def test_shape_mismatch_with_environment(self):
    name = "dmc_jax/nav1d/shapes-v0"
    nav1d_data.ensure_dataset("full", task_seed=0, horizon=32, step_size=0.1, num_episodes=3,
                              name=name)
    with self.assertRaisesRegex(ValueError, r"action space has shape \(1,\).*expects \(2,\)"):
      minari_io.load_episodes(name, (4,), (2,))
    with self.assertRaisesRegex(ValueError, r"made for task_seed=0 .* asks for 5"):
      nav1d_data.ensure_dataset("full", task_seed=5, horizon=32, step_size=0.1, name=name)
    with self.assertRaisesRegex(ValueError, r"holds 3 episodes .* data.num_episodes=1000"):
      nav1d_data.ensure_dataset("full", task_seed=0, horizon=32, step_size=0.1, name=name)


class ValidationTest(parameterized.TestCase):

  def test_good_episodes_pass(self):
    ep_lib.validate_episodes(_episodes(), (4,), (1,))

  def test_empty(self):
    with self.assertRaisesRegex(ValueError, "is empty: it holds 0 episodes"):
      ep_lib.validate_episodes([], (4,), (1,), "d")

  @parameterized.parameters(*ep_lib.FIELDS)
  def test_missing_field(self, field):
    eps = _episodes()
    del eps[1][field]
    with self.assertRaisesRegex(ValueError, f"episode 1 has no field '{field}'"):
      ep_lib.validate_episodes(eps, (4,), (1,))

  def test_observation_shape(self):
    with self.assertRaisesRegex(ValueError, r"field 'observations' has shape \(6, 3\); "
                                r"expected \(6, 4\).*observation shape \(4,\)"):
      ep_lib.validate_episodes(_episodes(obs_dim=3), (4,), (1,))

  def test_action_shape(self):
    with self.assertRaisesRegex(ValueError, r"field 'actions' has shape \(5, 2\)"):
      ep_lib.validate_episodes(_episodes(act_dim=2), (4,), (1,))

  def test_length_mismatch(self):
    eps = _episodes()
    eps[0]["terminations"] = eps[0]["terminations"][:-1]
    with self.assertRaisesRegex(ValueError, r"episode 0 field 'terminations' has shape \(4,\)"):
      ep_lib.validate_episodes(eps, (4,), (1,))

  @parameterized.parameters((np.nan, "observations"), (np.inf, "actions"),
                            (-np.inf, "rewards"))
  def test_non_finite(self, value, field):
    eps = _episodes()
    eps[2][field] = np.array(eps[2][field], np.float64)
    eps[2][field].flat[3] = value
    with self.assertRaisesRegex(ValueError, f"episode 2 field '{field}' holds a non-finite"):
      ep_lib.validate_episodes(eps, (4,), (1,))

  def test_dtype(self):
    eps = _episodes()
    eps[0]["rewards"] = np.array(["a"] * 5)
    with self.assertRaisesRegex(ValueError, r"field 'rewards' has dtype <U1"):
      ep_lib.validate_episodes(eps, (4,), (1,))

  def test_write_validates_first(self):
    import gymnasium as gym
    from dmc_jax.envs import registry
    registry.register_all()
    env = gym.make("dmc_jax/Nav1D-v0")
    with self.assertRaisesRegex(ValueError, "non-finite"):
      eps = _episodes()
      eps[0]["actions"][0, 0] = np.nan
      minari_io.write_dataset("dmc_jax/nav1d/bad-v0", eps, env, algorithm_name="x",
                              description="x")
    self.assertFalse(minari_io.exists("dmc_jax/nav1d/bad-v0"))


class ArraysTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    eps = _episodes(n=2, length=5)
    eps.append(_episodes(n=1, length=3, seed=1)[0])  # a shorter episode -> padding
    self.raw = eps
    self.eps = ep_lib.stack_episodes(eps)

  def test_stack_and_transitions(self):
    self.assertEqual(self.eps.observations.shape, (3, 6, 4))
    np.testing.assert_array_equal(self.eps.lengths, [5, 5, 3])
    np.testing.assert_array_equal(self.eps.observations[2, 4:], 0)
    tr = ep_lib.to_transitions(self.eps)
    self.assertEqual(tr.obs.shape, (13, 4))
    np.testing.assert_allclose(tr.next_obs[10], self.raw[2]["observations"][1])
    np.testing.assert_allclose(tr.obs[12], self.raw[2]["observations"][2])
    np.testing.assert_array_equal(tr.dones, [0, 0, 0, 0, 1] * 2 + [0, 0, 1])

  def test_segments_match_numpy_windows(self):
    ident = ep_lib.Normalizer(jnp.zeros(4), jnp.ones(4))
    ident_a = ep_lib.Normalizer(jnp.zeros(1), jnp.ones(1))
    data = ep_lib.make_segment_data(self.eps, horizon=4, obs_norm=ident, act_norm=ident_a)
    self.assertEqual(data.starts.shape, (13, 2))
    seg = jax.jit(ep_lib.sample_segments, static_argnums=(2, 3, 4))(
        jax.random.key(0), data, 64, 4, 3)
    idx = np.asarray(jax.random.randint(jax.random.key(0), (64,), 0, 13))
    for b in range(64):
      e, s = np.asarray(data.starts[idx[b]])
      length = self.eps.lengths[e]
      for j in range(4):
        valid = s + j < length
        self.assertEqual(bool(seg.mask[b, j]), valid)
        if valid:
          np.testing.assert_allclose(seg.obs[b, j], self.raw[e]["observations"][s + j])
          np.testing.assert_allclose(seg.actions[b, j], self.raw[e]["actions"][s + j])
      for j in range(3):  # history t-2..t, repeating obs_0 before the start
        np.testing.assert_allclose(seg.history[b, j],
                                   self.raw[e]["observations"][max(s - 2 + j, 0)])

  def test_normalizers(self):
    x = np.random.default_rng(0).normal(size=(500, 3)) * [1, 5, 0] + [0, 2, 7]
    mm = ep_lib.fit_normalizer(x, "minmax")
    y = np.asarray(mm.normalize(x))
    np.testing.assert_allclose(y[:, :2].min(0), -1, atol=1e-5)
    np.testing.assert_allclose(y[:, :2].max(0), 1, atol=1e-5)
    np.testing.assert_allclose(y[:, 2], 0)  # constant feature: scale 1
    np.testing.assert_allclose(mm.unnormalize(y), x, rtol=1e-5, atol=1e-5)
    g = ep_lib.fit_normalizer(x, "gaussian")
    np.testing.assert_allclose(np.asarray(g.normalize(x))[:, :2].std(0), 1, rtol=1e-4)
    with self.assertRaisesRegex(ValueError, "unknown normalizer 'zscore'"):
      ep_lib.fit_normalizer(x, "zscore")


if __name__ == "__main__":
  absltest.main()
