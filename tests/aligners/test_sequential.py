"""The scheduler's decisions: plateau -> advance, collapse -> rollback, passes -> finish."""
from absl.testing import absltest

from dmc_jax.aligners import sequential as seq


class SchedulerTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.cfg = seq.SchedulerConfig(stages=("rl", "dpo"), passes=2, min_chunks=2, max_chunks=5,
                                   patience=2, tol=0.1, drop_tol=1.0, lr_decay=0.5,
                                   max_rollbacks=2)

  def test_env_guard(self):
    self.assertIsNone(seq.env_guard(10.0, 2.0, 8.5, 1.0))  # within one std
    why = seq.env_guard(10.0, 2.0, 7.9, 1.0)
    self.assertIn("fell from 10 ± 2 to 7.9 (below 8", why)
    self.assertIsNotNone(seq.env_guard(10.0, 0.0, 9.99, 1.0))  # no spread: any drop counts
    self.assertIn("not finite", seq.env_guard(10.0, 2.0, float("nan"), 1.0))
    self.assertIsNone(seq.env_guard(10.0, 2.0, -100.0, 0.0))  # off

  def test_advances_on_a_plateau(self):
    s = seq.init_state(1.0)
    actions = []
    for r in (1.0, 1.5, 1.55, 1.58):  # gains 0.5, then 0.05 and 0.08 < tol * scale = 0.1
      s, d = seq.decide(self.cfg, s, reward=r, loss=1.0)
      actions.append(d["action"])
    self.assertEqual(actions, ["continue", "continue", "continue", "advance"])
    self.assertIn("plateau", d["reason"])
    self.assertEqual((s.pass_idx, s.stage_idx, s.chunk, s.best), (0, 1, 0, None))

  def test_max_chunks_and_finish_after_all_passes(self):
    s = seq.init_state(1.0)
    n = 0
    while not s.done:
      s, d = seq.decide(self.cfg, s, reward=float(n), loss=1.0)  # always improving
      n += 1
    # 2 passes x 2 stages x max_chunks 5.
    self.assertEqual(n, 20)
    self.assertEqual(d["action"], "finish")

  def test_rolls_back_on_nan_and_lowers_the_learning_rate(self):
    s = seq.init_state(1.0)
    s, _ = seq.decide(self.cfg, s, reward=1.0, loss=1.0)
    s, d = seq.decide(self.cfg, s, reward=float("nan"), loss=1.0)
    self.assertEqual(d["action"], "rollback")
    self.assertEqual(s.lr_scale, 0.5)
    s, d = seq.decide(self.cfg, s, reward=1.0, loss=1.0, nonfinite=0.9)
    self.assertEqual(d["action"], "rollback")
    self.assertIn("non-finite", d["reason"])
    self.assertEqual(s.lr_scale, 0.25)
    # A third collapse exceeds max_rollbacks=2: move on (from the last good state).
    s, d = seq.decide(self.cfg, s, reward=-5.0, loss=1.0)
    self.assertEqual(d["action"], "advance")
    self.assertTrue(d["rollback"])
    self.assertEqual((s.stage_idx, s.total_rollbacks, s.rollbacks), (1, 3, 0))

  def test_reward_drop_and_loss_spike_are_collapses(self):
    s = seq.init_state(2.0)  # scale 2: a drop of more than drop_tol * 2 = 2 collapses
    s, _ = seq.decide(self.cfg, s, reward=3.0, loss=1.0)
    s2, d = seq.decide(self.cfg, s, reward=1.5, loss=1.0)
    self.assertEqual(d["action"], "continue")
    s2, d = seq.decide(self.cfg, s, reward=0.9, loss=1.0)
    self.assertEqual(d["action"], "rollback")
    self.assertIn("reward drop", d["reason"])
    s, _ = seq.decide(self.cfg, s, reward=3.0, loss=1.2)
    s, d = seq.decide(self.cfg, s, reward=3.0, loss=50.0)
    self.assertEqual(d["action"], "rollback")
    self.assertIn("loss spike", d["reason"])

  def test_state_round_trips_through_json(self):
    s = seq.init_state(1.0)
    s, _ = seq.decide(self.cfg, s, reward=1.0, loss=0.5)
    self.assertEqual(seq.SchedulerState.from_json(s.to_json()), s)


if __name__ == "__main__":
  absltest.main()
