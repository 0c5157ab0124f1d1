"""The oracle critic (``dmc_jax.eval.oracle``, used by ``launch.oracle_selection``) is the task's DP-optimal Q."""
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from configs import nav1d as nav1d_config
from dmc_jax.data.episodes import Normalizer
from dmc_jax.envs import nav1d
from dmc_jax.eval import oracle


class OracleQTest(absltest.TestCase):

  def test_max_over_actions_is_the_optimal_value_and_units_are_undone(self):
    c = nav1d_config.get_config("dp,full")
    env = nav1d.make_params(c.env.task_seed, c.env.horizon, c.env.step_size)
    values = np.asarray(jax.jit(nav1d.solve_values)(env))
    # Normalisers that are not the identity: the oracle must undo them.
    obs_norm = Normalizer(jnp.array([0.1, 0.5, 0.0, 0.0]), jnp.array([0.9, 0.5, 1.0, 1.0]))
    act_norm = Normalizer(jnp.array([0.2]), jnp.array([2.0]))
    q_fn = oracle.oracle_q_fn(c, obs_norm, act_norm)
    grid = np.linspace(-1.0, 1.0, values.shape[1])
    acts = np.linspace(-1.0, 1.0, 81)  # solve_values' own action grid
    for t, i in ((0, 100), (7, 250), (31, 333)):
      s = grid[i]
      state = nav1d.Nav1DState(jnp.float32(s), jnp.int32(t))
      obs = jnp.broadcast_to(nav1d.observe(state, c.env.horizon), (len(acts), 4))
      q = np.asarray(q_fn(None, obs_norm.normalize(obs), act_norm.normalize(acts[:, None])))
      self.assertEqual(q.shape, (1, len(acts)))
      # V_t(s) = max_a r_t(s, a) + V_{t+1}(s'), on the same grids.
      np.testing.assert_allclose(q.max(), values[t, i], rtol=1e-4, atol=1e-4)
      # And a step away from the target is worth less than the best step.
      self.assertLess(q.min(), q.max() - 1e-3)


if __name__ == "__main__":
  absltest.main()
