"""The online ring buffer (``dmc_jax.data.replay``) against a plain Python list that keeps
the last ``capacity`` valid rows."""
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from dmc_jax.data import replay


def _rows(start, n, obs_dim=2):
  i = np.arange(start, start + n, dtype=np.float32)
  return {"obs": np.stack([i] * obs_dim, 1), "actions": i[:, None] * 10,
          "rewards": i * 100, "next_obs": np.stack([i + 0.5] * obs_dim, 1),
          "dones": (i % 2).astype(np.float32)}


class ReplayTest(absltest.TestCase):

  def test_add_matches_a_list_of_the_last_valid_rows(self):
    cap = 5
    buf = replay.init(cap, 2, 1)
    add = jax.jit(replay.add)
    kept = []  # the reference: valid rows in order, the oldest dropped past the capacity
    rng = np.random.default_rng(0)
    start = 0
    for n in (3, 4, 1, 6):
      rows = _rows(start, n)
      valid = rng.random(n) < 0.7
      buf = add(buf, jax.tree.map(jnp.asarray, rows), jnp.asarray(valid))
      kept += [start + i for i in range(n) if valid[i]]
      kept = kept[-cap:]
      start += n
      self.assertEqual(int(buf["size"]), len(kept))
      stored = sorted(float(x) for x in np.asarray(buf["rewards"])[:len(kept)] / 100)
      if len(kept) == cap:  # full: exactly the last `cap` valid rows, in ring order
        stored = sorted(float(x) for x in np.asarray(buf["rewards"]) / 100)
      self.assertEqual(stored, sorted(float(k) for k in kept))
      # Fields stay aligned row by row.
      r = np.asarray(buf["rewards"])[:int(buf["size"])] / 100
      np.testing.assert_array_equal(np.asarray(buf["actions"])[:len(r), 0], r * 10)
      np.testing.assert_array_equal(np.asarray(buf["next_obs"])[:len(r), 0], r + 0.5)

  def test_sample_draws_only_stored_rows(self):
    buf = replay.init(8, 2, 1)
    buf = replay.add(buf, jax.tree.map(jnp.asarray, _rows(1, 3)), jnp.ones(3, bool))
    t = replay.sample(buf, jax.random.key(0), 256)
    self.assertEqual(t.obs.shape, (256, 2))
    self.assertEqual(set(np.asarray(t.rewards).tolist()), {100.0, 200.0, 300.0})
    np.testing.assert_array_equal(np.asarray(t.actions)[:, 0] * 10, np.asarray(t.rewards))
    empty = replay.sample(replay.init(4, 2, 1), jax.random.key(1), 3)
    np.testing.assert_array_equal(np.asarray(empty.obs), np.zeros((3, 2)))


if __name__ == "__main__":
  absltest.main()
