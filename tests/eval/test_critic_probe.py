"""``critic_probe.greedy_returns``: the argmax-over-uniform-candidates controller, the tool of
``launch.critic_study``. Checked against the task's DP values (a closed form on the grid)."""
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from configs import nav1d as nav1d_config
from dmc_jax.data.episodes import Normalizer
from dmc_jax.envs import nav1d
from dmc_jax.eval import critic_probe, oracle


class GreedyReturnsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.c = nav1d_config.get_config("dp,full")
    self.env = nav1d.make_params(self.c.env.task_seed, self.c.env.horizon,
                                 self.c.env.step_size)
    # Normalisers that are not the identity: the probe must pass normalised inputs.
    self.obs_norm = Normalizer(jnp.array([0.1, 0.5, 0.0, 0.0]), jnp.array([0.9, 0.5, 1.0, 1.0]))
    self.act_norm = Normalizer(jnp.array([0.2]), jnp.array([2.0]))
    q = oracle.oracle_q_fn(self.c, self.obs_norm, self.act_norm)
    self.qstar = lambda o, a: q(None, o, a)

  def run_probe(self, q_fn, n, episodes=32, combine=None):
    return np.asarray(jax.jit(lambda k: critic_probe.greedy_returns(
        k, q_fn, self.env, obs_norm=self.obs_norm, act_norm=self.act_norm,
        num_candidates=n, num_episodes=episodes, combine=combine))(jax.random.key(3)))

  def test_oracle_with_many_candidates_reaches_the_dp_value(self):
    values = np.asarray(jax.jit(nav1d.solve_values)(self.env))
    optimum = float(values[0].mean())  # starts ~ U[-1, 1] on the 401-point grid
    ret = self.run_probe(self.qstar, 64)
    self.assertGreater(ret.mean(), optimum - 1.0)
    self.assertLessEqual(ret.max(), self.env.horizon + 1e-4)

  def test_ranking_direction_and_candidate_count_matter(self):
    best = self.run_probe(self.qstar, 16).mean()
    worst = self.run_probe(lambda o, a: -self.qstar(o, a), 16).mean()
    one = self.run_probe(self.qstar, 1).mean()  # a single candidate: uniform random actions
    self.assertGreater(best, one + 5.0)
    self.assertLess(worst, one - 1.0)

  def test_heads_are_combined_by_their_minimum_or_the_given_rule(self):
    # Head 0 is Q*, head 1 is a constant far above it: the minimum is Q* again.
    two = lambda o, a: jnp.concatenate([self.qstar(o, a), jnp.full((1, o.shape[0]), 1e3)])
    np.testing.assert_array_equal(self.run_probe(two, 8), self.run_probe(self.qstar, 8))
    # Combined by the negated head 0 instead: the controller ranks against Q*.
    neg = self.run_probe(two, 8, combine=lambda q: -q[0])
    self.assertLess(neg.mean(), self.run_probe(self.qstar, 8).mean() - 5.0)


if __name__ == "__main__":
  absltest.main()
