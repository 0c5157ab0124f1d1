"""Critic and DMC pretraining data-parallel over one mesh (issue #19): the same seed gives
the same parameters on 1 device and on the 4 simulated devices (float32 round-off), the
work is really split (an all-reduce in the program, the batch sharded), and a batch size the
devices do not divide is a clear error before any work."""
import unittest

import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import nav1d as nav1d_config
from dmc_jax.data import episodes as ep_lib
from dmc_jax.envs import nav1d
from dmc_jax.eval import evaluators, rollout
from dmc_jax.train import builders, pretrain, sharding, validation
from dmc_jax.train import step as step_lib


def _max_rel_diff(a, b):
  diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y))) /
                                          (float(np.max(np.abs(np.asarray(y)))) + 1e-12)), a, b)
  return max(jax.tree.leaves(diffs))


def _tree_changed(a, b):
  return max(jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)))


class MeshPretrainTest(unittest.TestCase):

  @classmethod
  def setUpClass(cls):
    assert jax.device_count() == 4
    cls.mesh = sharding.job_mesh("mesh")
    cls.config = nav1d_config.get_config("dp,full,smoke")
    cls.config.critic.batch_size = 64
    rng = np.random.default_rng(0)
    m = 512
    cls.trans = ep_lib.Transitions(
        rng.normal(size=(m, 1)).astype(np.float32), rng.uniform(-1, 1, (m, 1)).astype(np.float32),
        rng.normal(size=(m,)).astype(np.float32), rng.normal(size=(m, 1)).astype(np.float32),
        (rng.uniform(size=(m,)) < 0.05).astype(np.float32))

  def test_job_mesh(self):
    self.assertEqual(sharding.mesh_size(self.mesh), 4)
    self.assertIsNone(sharding.job_mesh("none"))
    with self.assertRaisesRegex(ValueError, "train.parallel"):
      sharding.job_mesh("gspmd")

  def _critic_run(self, mesh, steps=30):
    critic = builders.make_critic(self.config)
    state = critic.init(jax.random.key(0), 1, 1)
    before = jax.tree.map(np.asarray, state.q.params)
    run = pretrain.make_critic_chunk(critic, jax.random.key(1), self.config.critic.batch_size,
                                     mesh)
    state, metrics = run(state, 0, steps, jax.tree.map(jnp.asarray, self.trans))
    return before, state, metrics

  def test_critic_one_device_equals_mesh(self):
    before, one, m_one = self._critic_run(None)
    _, four, m_four = self._critic_run(self.mesh)
    # Training moved the parameters far more than the two runs differ.
    self.assertGreater(_tree_changed(one.q.params, before), 1e-3)
    self.assertLess(_max_rel_diff(four.q.params, one.q.params), 1e-4)
    self.assertLess(_max_rel_diff(four.v.params, one.v.params), 1e-4)
    np.testing.assert_allclose(m_four["q_loss"], m_one["q_loss"], rtol=1e-4, atol=1e-6)
    # The state comes back replicated over all four devices.
    leaf = jax.tree.leaves(four.q.params)[0]
    self.assertEqual(len(leaf.sharding.device_set), 4)
    self.assertTrue(leaf.sharding.is_fully_replicated)

  def test_critic_program_splits_the_batch(self):
    critic = builders.make_critic(self.config)
    k_train = jax.random.key(1)
    bs = self.config.critic.batch_size
    data = jax.tree.map(jnp.asarray, self.trans)

    def program(mesh):
      def body(s, i):
        batch = ep_lib.sample_transitions(jax.random.fold_in(k_train, i), data, bs)
        return critic.update(s, sharding.shard_batch(batch, mesh))
      state = sharding.replicate(critic.init(jax.random.key(0), 1, 1), mesh)
      fn = jax.jit(lambda s: jax.lax.scan(body, s, jnp.arange(2)))
      return fn.lower(state).compile().as_text()
    self.assertIn("all-reduce", program(self.mesh))
    self.assertNotIn("all-reduce", program(None))

  def test_dmc_one_device_equals_mesh(self):
    cfg = self.config
    dmc = builders.make_dmc(cfg, 1, 1)
    rng = np.random.default_rng(1)
    eps = ep_lib.Episodes(
        observations=rng.normal(size=(8, 33, 1)).astype(np.float32),
        actions=rng.uniform(-1, 1, (8, 32, 1)).astype(np.float32),
        rewards=rng.normal(size=(8, 32)).astype(np.float32),
        terminals=np.zeros((8, 32), bool), lengths=np.full((8,), 32))
    norm_o = ep_lib.fit_normalizer(eps.observations.reshape(-1, 1), "minmax")
    norm_a = ep_lib.fit_normalizer(eps.actions.reshape(-1, 1), "minmax")
    seg = ep_lib.make_segment_data(eps, dmc.horizon, norm_o, norm_a)
    step_fn = step_lib.make_train_step(dmc.loss, cfg.train.ema_decay)

    def train(mesh):
      state = step_lib.create_train_state(dmc.init(jax.random.key(0)), optax.adam(1e-3))
      run = pretrain.make_dmc_chunk(dmc, step_fn, jax.random.key(2), 32, mesh)
      return run(state, 0, 20, sharding.replicate(seg, mesh))

    one, m_one = train(None)
    four, m_four = train(self.mesh)
    self.assertLess(_max_rel_diff(four.params, one.params), 1e-4)
    self.assertLess(_max_rel_diff(four.ema_params, one.ema_params), 1e-4)
    np.testing.assert_allclose(m_four["loss"], m_one["loss"], rtol=1e-4, atol=1e-6)

  def test_evaluation_splits_episodes_and_scores_the_same(self):
    cfg = nav1d_config.get_config("dp,full,smoke")
    dmc = builders.make_dmc(cfg, 4, 1)  # Nav1D observations have 4 entries
    critic = builders.make_critic(cfg)
    cstate = critic.init(jax.random.key(3), 4, 1)
    grid = np.linspace(-1, 1, 11, dtype=np.float32)[:, None]
    obs_norm = ep_lib.fit_normalizer(np.repeat(grid, 4, 1), "minmax")
    act_norm = ep_lib.fit_normalizer(grid, "minmax")
    info = {"dataset_id": "dmc_jax/nav1d/full-v0"}
    params = dmc.init(jax.random.key(4))
    out = {}
    for mode in ("none", "mesh"):
      c = nav1d_config.get_config("dp,full,smoke")
      c.train.parallel = mode
      evaluate = evaluators.make_evaluator(c, dmc, obs_norm, act_norm, critic.q_fn, critic.v_fn, info)
      out[mode] = evaluate(params, (cstate.q.params, cstate.v.params), jax.random.key(5), 8)
    np.testing.assert_allclose(out["mesh"][1]["return"], out["none"][1]["return"], atol=1e-4)
    # Nav1D's normalised score: the return as a % of the DP-optimal return from the same
    # starts (the episodes' own, drawn from the evaluation key as the roll-out draws them).
    m = out["none"][0]
    env = nav1d.make_params(c.env.task_seed, c.env.horizon, c.env.step_size)
    k_reset, _ = jax.random.split(jax.random.key(5))
    _, obs0 = jax.vmap(nav1d.reset, (0, None))(jax.random.split(k_reset, 8), env)
    v0 = nav1d.optimal_return(jax.jit(nav1d.solve_values)(env), obs0[:, 0])
    self.assertAlmostEqual(m["optimal_return"], float(np.mean(v0)), places=4)
    self.assertAlmostEqual(m["normalized_score"],
                           100 * m["return_mean"] / m["optimal_return"], places=3)
    self.assertLess(m["normalized_score"], 100.0)  # an untrained policy
    self.assertGreater(np.std(out["none"][1]["return"]), 0)  # distinct episodes
    # The roll-out itself: the episodes' returns come back split over the four devices.
    env = nav1d.make_params(0, 8, 0.1)
    act = lambda p, cp, k, h: (jax.random.uniform(k, (h.shape[0], 1, 1), minval=-1), {})
    run = rollout.make_rollout(nav1d.reset, nav1d.step, env, max_steps=8, act_fn=act,
                               shard=lambda t: sharding.shard_batch(t, self.mesh))
    plain = rollout.make_rollout(nav1d.reset, nav1d.step, env, max_steps=8, act_fn=act)
    r = jax.jit(run, static_argnums=3)(None, None, jax.random.key(6), 8)["returns"]
    self.assertEqual(len(r.sharding.device_set), 4)
    self.assertFalse(r.sharding.is_fully_replicated)
    np.testing.assert_allclose(
        r, jax.jit(plain, static_argnums=3)(None, None, jax.random.key(6), 8)["returns"],
        atol=1e-6)

  def test_batch_the_devices_do_not_divide_is_refused(self):
    for key in ("critic.batch_size", "train.batch_size"):
      c = nav1d_config.get_config("dp,full,smoke")
      group, name = key.split(".")
      c[group][name] = 30
      with self.assertRaisesRegex(ValueError,
                                  rf"config\.{key}=30 is invalid: a multiple of the 4 devices"):
        validation.validate_config(c)
      c.train.parallel = "none"
      validation.validate_config(c)  # one device: any batch size


if __name__ == "__main__":
  unittest.main()
