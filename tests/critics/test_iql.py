"""IQL losses against hand computations and a closed-form expectile; candidate selection."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest

from dmc_jax.critics import iql
from dmc_jax.critics import selection as sel
from dmc_jax.data.episodes import Transitions
from dmc_jax.networks.critic import TwinQ, ValueNet


def numpy_expectile(x, tau, iters=100):
  """Bisection on the first-order condition sum |tau - 1(x < m)| (x - m) = 0."""
  lo, hi = x.min(), x.max()
  for _ in range(iters):
    m = (lo + hi) / 2
    g = np.sum(np.where(x < m, 1 - tau, tau) * (x - m))
    lo, hi = (m, hi) if g > 0 else (lo, m)
  return (lo + hi) / 2


class IQLTest(absltest.TestCase):

  def test_expectile_loss_hand_values(self):
    diff = jnp.array([2.0, -1.0, 0.5, 0.0])
    # tau = 0.7: 0.7 * 4 = 2.8; 0.3 * 1 = 0.3; 0.7 * 0.25 = 0.175; 0.
    np.testing.assert_allclose(iql.expectile_loss(diff, 0.7), [2.8, 0.3, 0.175, 0.0],
                               rtol=1e-6)
    # tau = 0.5 is half the squared error.
    np.testing.assert_allclose(iql.expectile_loss(diff, 0.5), 0.5 * diff ** 2, rtol=1e-6)

  def test_value_and_q_losses_hand_computed(self):
    """One update's metrics equal the losses computed by hand from the networks' outputs."""
    q_mod, v_mod = TwinQ((8,)), ValueNet((8,))
    q_fn = lambda p, o, a: q_mod.apply({"params": p}, o, a)
    v_fn = lambda p, o: v_mod.apply({"params": p}, o)
    state = iql.init_iql(jax.random.key(0), q_mod, v_mod, 2, 1, optax.sgd(0.0), optax.sgd(0.0))
    rng = np.random.default_rng(0)
    batch = Transitions(*(jnp.asarray(x, jnp.float32) for x in (
        rng.normal(size=(5, 2)), rng.normal(size=(5, 1)), rng.normal(size=5),
        rng.normal(size=(5, 2)), [0, 0, 1, 0, 1])))
    update = iql.make_iql_update(q_fn, v_fn, discount=0.9, expectile=0.8)
    _, m = update(state, batch)
    q_t = np.min(np.asarray(q_fn(state.target_q_params, batch.obs, batch.actions)), 0)
    v = np.asarray(v_fn(state.v.params, batch.obs))
    u = q_t - v
    v_loss = np.mean(np.where(u < 0, 0.2, 0.8) * u ** 2)
    target = np.asarray(batch.rewards) + 0.9 * (1 - np.asarray(batch.dones)) * np.asarray(
        v_fn(state.v.params, batch.next_obs))
    q = np.asarray(q_fn(state.q.params, batch.obs, batch.actions))
    q_loss = np.mean(np.sum((q - target[None]) ** 2, 0))
    np.testing.assert_allclose(m["v_loss"], v_loss, rtol=1e-5)
    np.testing.assert_allclose(m["q_loss"], q_loss, rtol=1e-5)

  def test_bandit_value_converges_to_reward_expectile(self):
    """One-step bandit (done = 1): Q -> r(a), and V -> the tau-expectile of r(a) under the data."""
    rng = np.random.default_rng(1)
    n = 2048
    acts = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    rewards = (1.0 - 2.0 * (acts[:, 0] - 0.3) ** 2).astype(np.float32)
    obs = np.zeros((n, 1), np.float32)
    data = Transitions(*(jnp.asarray(x) for x in (obs, acts, rewards, obs,
                                                  np.ones(n, np.float32))))
    q_mod, v_mod = TwinQ((64, 64)), ValueNet((64, 64))
    q_fn = lambda p, o, a: q_mod.apply({"params": p}, o, a)
    v_fn = lambda p, o: v_mod.apply({"params": p}, o)
    tau = 0.8
    update = iql.make_iql_update(q_fn, v_fn, expectile=tau, target_update_rate=0.05)
    lr = optax.cosine_decay_schedule(3e-3, 3000)  # decay: the expectile is a noisy SGD target
    state = iql.init_iql(jax.random.key(0), q_mod, v_mod, 1, 1, optax.adam(lr), optax.adam(lr))

    @jax.jit
    def train(state):
      def body(s, i):
        idx = jax.random.randint(jax.random.key(i), (256,), 0, n)
        return update(s, jax.tree.map(lambda x: x[idx], data))[0], None
      return jax.lax.scan(body, state, jnp.arange(3000))[0]

    state = train(state)
    probe = jnp.array([[-0.8], [0.0], [0.3], [0.9]])
    q = np.asarray(q_fn(state.q.params, jnp.zeros((4, 1)), probe))
    np.testing.assert_allclose(q.mean(0), 1.0 - 2.0 * (np.asarray(probe[:, 0]) - 0.3) ** 2,
                               atol=0.08)
    v = float(v_fn(state.v.params, jnp.zeros((1, 1)))[0])
    self.assertAlmostEqual(v, numpy_expectile(rewards, tau), delta=0.03)


class SelectionTest(absltest.TestCase):

  def test_expectation_and_argmax(self):
    cands = jnp.array([[[0.0], [1.0], [2.0]], [[3.0], [-1.0], [5.0]]])
    np.testing.assert_allclose(sel.expectation(cands), [[1.0], [7.0 / 3]], rtol=1e-6)
    q = jnp.array([[0.1, 0.9, 0.3], [2.0, 1.0, 0.0]])
    idx = sel.select_index(None, q, None, "argmax")
    np.testing.assert_array_equal(idx, [1, 0])
    np.testing.assert_allclose(sel.gather(cands, idx), [[1.0], [3.0]])

  def test_sampling_modes_follow_their_weights(self):
    q = jnp.tile(jnp.array([[1.0, 0.0]]), (20000, 1))
    v = jnp.full((20000,), 0.5)
    idx = sel.select_index(jax.random.key(0), q, v, "softmax", temperature=2.0)
    # softmax(2 * [0.5, -0.5]) -> p(0) = 1 / (1 + e^-2) = 0.8808
    self.assertAlmostEqual(float(jnp.mean(idx == 0)), 1 / (1 + np.exp(-2.0)), delta=0.01)
    idx = sel.select_index(jax.random.key(1), q, v, "expectile", expectile=0.7)
    # weights 0.7 (above V) and 0.3 (below V)
    self.assertAlmostEqual(float(jnp.mean(idx == 0)), 0.7, delta=0.01)
    with self.assertRaisesRegex(ValueError, "unknown selection 'best'"):
      sel.select_index(None, q, v, "best")


if __name__ == "__main__":
  absltest.main()
