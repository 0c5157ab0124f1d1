"""The scheduler's decisions: plateau -> advance, collapse -> rollback, passes -> finish."""
from absl.testing import absltest
import numpy as np

from configs import nav1d as nav1d_config
from dmc_jax.aligners import sequential as seq
from dmc_jax.train import validation


class SchedulerTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.cfg = seq.SchedulerConfig(stages=("rl", "dpo"), passes=2, min_chunks=2, max_chunks=5,
                                   patience=2, tol=0.1, drop_tol=1.0, lr_decay=0.5,
                                   max_rollbacks=2)

  def test_env_guard_is_a_paired_test(self):
    rng = np.random.default_rng(0)
    before = {"return": rng.normal(100.0, 50.0, 16)}  # large seed-to-seed spread
    up = {"return": before["return"] + 5.0 + rng.normal(0, 1, 16)}
    self.assertIsNone(seq.env_guard(before, up, 1.0))
    self.assertIsNone(seq.env_guard(before, dict(before), 1.0))  # unchanged: kept
    # A fall of 3 per episode is far below one std (50) but many paired SEs.
    down = {"return": before["return"] - 3.0 + rng.normal(0, 1, 16)}
    why = seq.env_guard(before, down, 1.0)
    self.assertRegex(why, r"environment return fell from .* on the same 16 episode seeds")
    d = down["return"] - before["return"]
    se = d.std(ddof=1) / 4.0
    self.assertLess(d.mean(), -3 * se)
    # The threshold is tol paired SEs: a change of -0.5 SE is kept at tol 1, not at tol 0.25.
    noise = np.tile([1.0, -1.0], 8)
    half = {"return": before["return"] + noise - 0.5 * noise.std(ddof=1) / 4.0}
    self.assertIsNone(seq.env_guard(before, half, 1.0))
    self.assertIsNotNone(seq.env_guard(before, half, 0.25))
    # Success is checked too: the return holds but one in four successes is lost.
    b = {"return": before["return"], "success": np.tile([1.0, 1.0, 1.0, 1.0], 4)}
    a = {"return": before["return"], "success": np.tile([1.0, 0.0, 1.0, 1.0], 4)}
    self.assertRegex(seq.env_guard(b, a, 1.0), r"environment success fell from 1 to 0.75")
    nan = {"return": np.where(np.arange(16) == 3, np.nan, before["return"])}
    self.assertIn("not finite", seq.env_guard(before, nan, 1.0))
    self.assertIsNone(seq.env_guard(before, down, 0.0))  # off
    with self.assertRaisesRegex(ValueError, r"shape \(16,\), after \(8,\)"):
      seq.env_guard(before, {"return": before["return"][:8]}, 1.0)

  def test_env_guard_watches_every_selection_it_is_given(self):
    rng = np.random.default_rng(1)
    before = {"return": rng.normal(20.0, 3.0, 16)}
    before["argmax/return"] = before["return"] + 5.0
    up = {"return": before["return"] + 2.0, "argmax/return": before["argmax/return"] + 0.1}
    self.assertIsNone(seq.env_guard(before, up, 1.0))
    # The sampler gains, the deployed argmax controller loses on every seed: reverted.
    down = {"return": before["return"] + 2.0,
            "argmax/return": before["argmax/return"] - 1.0 + rng.normal(0, 0.1, 16)}
    self.assertRegex(seq.env_guard(before, down, 1.0),
                     r"environment argmax/return fell from 25\.\d+ to 24\.\d+")
    # The reverse: the argmax controller holds and the sampler falls.
    down2 = {"return": before["return"] - 1.0 + rng.normal(0, 0.1, 16),
             "argmax/return": before["argmax/return"]}
    self.assertRegex(seq.env_guard(before, down2, 1.0), r"^environment return fell")
    # Keys that are not guard measures are ignored.
    self.assertIsNone(seq.env_guard(dict(before, **{"argmax/length": np.ones(16)}),
                                    dict(up, **{"argmax/length": np.zeros(16)}), 1.0))

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

  def test_a_rollback_at_the_budget_moves_on_instead_of_running_past_it(self):
    """A visit runs at most ``max_chunks`` chunks, rolled-back ones included: a collapse on
    the last budgeted chunk moves on (from the best adapters) rather than rolling back into
    one more chunk."""
    s = seq.init_state(1.0)
    for r in (1.0, 2.0, 3.0, 4.0):
      s, d = seq.decide(self.cfg, s, reward=r, loss=1.0)
    s, d = seq.decide(self.cfg, s, reward=-5.0, loss=1.0)  # chunk 5 of max_chunks 5
    self.assertEqual((d["chunk"], d["action"]), (5, "advance"))
    self.assertTrue(d["rollback"])
    self.assertIn("max_chunks=5 reached", d["reason"])
    self.assertEqual((s.stage_idx, s.chunk, s.total_rollbacks), (1, 0, 1))
    # Whatever the rewards, no decision is taken on a chunk beyond the budget.
    rng = np.random.default_rng(0)
    s, chunks = seq.init_state(1.0), []
    while not s.done:
      r = float(rng.normal()) if rng.random() < 0.7 else -50.0
      s, d = seq.decide(self.cfg, s, reward=r, loss=1.0)
      chunks.append(d["chunk"])
    self.assertLessEqual(max(chunks), self.cfg.max_chunks)

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

  def test_a_rollback_decays_its_own_stages_learning_rate(self):
    def run(scope):
      cfg = seq.SchedulerConfig(stages=("rl", "dpo"), passes=2, min_chunks=1, max_chunks=3,
                                patience=1, lr_decay=0.5, lr_decay_scope=scope)
      s, seen = seq.init_state(1.0), []
      s, _ = seq.decide(cfg, s, reward=1.0, loss=1.0)
      s, d = seq.decide(cfg, s, reward=float("nan"), loss=1.0)  # RL pass 0 rolls back
      self.assertEqual(d["action"], "rollback")
      while not s.done:
        seen.append((seq.stage(cfg, s), s.pass_idx, seq.lr_scale(cfg, s)))
        s, _ = seq.decide(cfg, s, reward=1.0, loss=1.0)
        s = seq.SchedulerState.from_json(s.to_json())  # survives the checkpoint's JSON
      return dict(((st, p), x) for st, p, x in seen)
    stage = run("stage")
    self.assertEqual(stage[("rl", 0)], 0.5)
    self.assertEqual(stage[("dpo", 0)], 1.0)   # DPO never collapsed: its own rate
    self.assertEqual(stage[("rl", 1)], 0.5)    # RL keeps its decay into the next pass
    self.assertEqual(stage[("dpo", 1)], 1.0)
    run_scope = run("run")  # the old rule: every later stage inherits the decay
    self.assertEqual(set(run_scope.values()), {0.5})
    with self.assertRaisesRegex(ValueError, "lr_decay_scope"):
      seq.SchedulerConfig(lr_decay_scope="visit")
    c = nav1d_config.get_config("dp,full,smoke")
    c.align.lr_decay_scope = "visit"
    with self.assertRaisesRegex(ValueError, "align.lr_decay_scope"):
      validation.validate_config(c)

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
