"""The alignment job end to end (tiny): scheduler decisions, rollback on injected NaN,
online fine-tuning, the cascade, before -> after results, and align-config validation."""
import json
import os
import tempfile
from unittest import mock

import numpy as np
from absl.testing import absltest

from configs import nav1d as nav1d_config
from dmc_jax.train import align as align_lib
from dmc_jax.train import checkpoint, hooks, offline, validation


def smoke(**align):
  c = nav1d_config.get_config("dp,full,smoke")
  c.eval.num_episodes = 8
  for k, v in align.items():
    group = c.align
    *path, name = k.split("__")
    for p in path:
      group = group[p]
    group[name] = v
  return c


class AlignJobTest(absltest.TestCase):

  def test_rollback_online_cascade_and_results(self):
    c = smoke(online__enabled=True, cascade__enabled=True, max_chunks=3, parallel="shard_map")
    c.align.lr_decay_scope = "stage"
    with tempfile.TemporaryDirectory() as wd:
      results = offline.train_and_evaluate(c, wd, hooks.Hooks(nan_chunks=(2,)))
      with open(os.path.join(wd, "decisions.jsonl")) as f:
        decisions = [json.loads(line) for line in f]
      # Chunk 2 saw NaN input: every update was skipped -> rollback, learning rate halved.
      second = decisions[1]
      self.assertEqual((second["action"], second["stage"]), ("rollback", "rl"))
      self.assertIn("non-finite", second["reason"])
      rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
      lrs = [r["align/lr"] for r in rows if "align/lr" in r]
      self.assertAlmostEqual(lrs[2], lrs[0] * c.align.lr_decay, places=8)
      # With align.lr_decay_scope = "stage" the rollback decayed RL's learning rate only:
      # the next stages run at their own.
      for name in ("dpo", "sft"):
        first = next(r for r in rows if any(k.startswith(f"align/{name}/") for k in r))
        self.assertAlmostEqual(first["align/lr"], c.align[name].lr, places=8)
      # (a revert may follow a stage's last decision; it is the env guard's, not the scheduler's)
      self.assertEqual([d for d in decisions if d["action"] != "revert"][-1]["action"], "finish")
      self.assertEqual([d["stage"] for d in decisions if d["action"] in ("advance", "finish")],
                       ["rl", "dpo", "sft"])
      # Online fine-tuning ran after the good chunks.
      self.assertTrue(any("align/rl/online_return" in r for r in rows))
      # Before -> after for each selection, and the cascade appended.
      for sel in c.align.eval_selections:
        row = results["align"][sel]
        for name in ("before", "after", "cascade"):
          self.assertTrue(np.isfinite(row[name]["return_mean"]), (sel, name))
      self.assertTrue(os.path.exists(os.path.join(wd, "align_curve.png")))
      table = open(os.path.join(wd, "align_results.md")).read()
      for sel in c.align.eval_selections:  # the report's detailed row, cascade included
        cas = results["align"][sel]["cascade"]
        self.assertIn(f"| {sel} |", table)
        self.assertIn(f"| {cas['return_mean']:.2f} ± {cas['return_std']:.2f} |", table)
      self.assertLen(results["align_curve"], 4)  # reference + one point per stage
      # The latest alignment checkpoint is finite and holds the scheduler's position.
      ck = checkpoint.Checkpointer(os.path.join(wd, "checkpoints", "align"))
      tree, meta = ck.restore_untyped(), ck.restore_meta()
      ck.close()
      self.assertTrue(meta["scheduler"]["done"])
      self.assertEqual(meta["scheduler"]["total_rollbacks"], 1)
      self.assertTrue(checkpoint.all_finite(tree))


  def test_a_visit_ends_on_its_best_adapters(self):
    """Each visit starts where the last one was kept: the next visit's starting reward (its
    first decision's ``best_before``, scored on the same contexts with the same critic) is
    the previous visit's best, not its last chunk's reward."""
    c = smoke(max_chunks=3, min_chunks=3, env_guard=0.0)
    with tempfile.TemporaryDirectory() as wd:
      offline.train_and_evaluate(c, wd)
      with open(os.path.join(wd, "decisions.jsonl")) as f:
        decisions = [json.loads(line) for line in f]
      for prev, nxt in (("rl", "dpo"), ("dpo", "sft")):
        visit = [d for d in decisions if d["stage"] == prev]
        good = [d["reward"] for d in visit if d["action"] != "rollback" and
                not d.get("rollback")]
        best = max([visit[0]["best_before"]] + good)
        start = [d for d in decisions if d["stage"] == nxt][0]["best_before"]
        self.assertAlmostEqual(start, best, places=4, msg=(prev, visit))
      # the start of the first visit is the reference's tracked reward (step-0 row)
      rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
      r0 = [r["align/track_reward"] for r in rows if r["step"] == 0 and
            "align/track_reward" in r][0]
      self.assertAlmostEqual(decisions[0]["best_before"], r0, places=4)

  def test_killed_before_the_first_alignment_checkpoint_writes_step_0_rows_once(self):
    """A job stopped after the alignment's reference evaluation (step-0 rows written) and
    before its first checkpoint: the resumed run writes those rows once, not twice."""
    c = smoke(stages=("rl",), eval_selections=("first",), max_chunks=1, min_chunks=1)
    real_save = checkpoint.Checkpointer.save

    class Killed(Exception):
      pass

    def save(self, *args, **kw):
      if os.path.basename(self.directory) == "align":
        raise Killed
      return real_save(self, *args, **kw)

    with tempfile.TemporaryDirectory() as wd:
      with mock.patch.object(checkpoint.Checkpointer, "save", save):
        with self.assertRaises(Killed):
          offline.train_and_evaluate(c, wd)
      rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
      # The reference rows (and the first chunk's) were written before the kill.
      self.assertLen([r for r in rows if "align/track_reward" in r and r["step"] == 0], 1)
      offline.train_and_evaluate(c, wd)
      rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
    ref_rows = [r for r in rows if "align/track_reward" in r and r["step"] == 0]
    self.assertLen(ref_rows, 1)
    self.assertLen([r for r in rows if "align/curve_return_mean" in r and r["step"] == 0], 1)

  def test_env_guard_reverts_a_visit_whose_env_return_falls(self):
    """The environment return after the RL visit is made to fall: the visit is reverted, so
    the aligned model is the reference again (same returns on the same seeds)."""
    c = smoke(stages=("rl",), eval_selections=("first",), max_chunks=1, min_chunks=1)
    real = align_lib.run_alignment
    calls = []

    def run_alignment(*args, evaluate, **kw):
      def fake(params, critic_params, key, n):
        m, r = evaluate(params, critic_params, key, n)
        calls.append(m["return_mean"])
        if len(calls) == 2:  # the evaluation after the RL visit: every episode loses 100
          m = dict(m, return_mean=m["return_mean"] - 100.0)
          r = dict(r, **{"return": r["return"] - 100.0})
        return m, r
      return real(*args, evaluate=fake, **kw)

    with tempfile.TemporaryDirectory() as wd, mock.patch.object(align_lib, "run_alignment",
                                                                run_alignment):
      results = offline.train_and_evaluate(c, wd)
      decisions = [json.loads(line) for line in open(os.path.join(wd, "decisions.jsonl"))]
    self.assertEqual([d["action"] for d in decisions], ["finish", "revert"])
    self.assertIn("environment return fell", decisions[1]["reason"])
    self.assertLen(calls, 3)  # reference, after RL (rejected), after the revert
    self.assertEqual(calls[2], calls[0])  # the reverted adapters are the initial ones
    row = results["align"]["first"]
    self.assertEqual(row["after"]["return_mean"], row["before"]["return_mean"])
    self.assertEqual(results["align_curve"][-1][5], "rl (pass 0) reverted")


  def test_env_guard_watches_the_deployed_argmax_controller(self):
    """With ``guard_selections=("argmax",)`` the guard compares the argmax controller's
    per-episode returns too: a fall there alone reverts the visit."""
    c = smoke(stages=("rl",), eval_selections=("first",), max_chunks=1, min_chunks=1,
              guard_selections=("argmax",))
    real = align_lib.run_alignment
    seen, first = [], []

    def run_alignment(*args, evaluate, **kw):
      def fake(params, critic_params, key, n):
        m, r = evaluate(params, critic_params, key, n)
        seen.append(sorted(r))
        first.append(r)
        if len(seen) == 2:  # after the RL visit: only the argmax controller loses (the
          # sampler's own returns are held at the reference's, whatever the visit did)
          r = dict(r, **{"return": first[0]["return"],
                         "argmax/return": r["argmax/return"] - 100.0})
        return m, r
      return real(*args, evaluate=fake, **kw)

    with tempfile.TemporaryDirectory() as wd, mock.patch.object(align_lib, "run_alignment",
                                                                run_alignment):
      offline.train_and_evaluate(c, wd)
      decisions = [json.loads(line) for line in open(os.path.join(wd, "decisions.jsonl"))]
    self.assertEqual(seen[0], ["argmax/return", "return"])
    self.assertEqual([d["action"] for d in decisions], ["finish", "revert"])
    self.assertIn("environment argmax/return fell", decisions[1]["reason"])


class OnlineSelectionTest(absltest.TestCase):

  def test_online_rollouts_use_the_configured_selection(self):
    """``align.online.selection``: '' rolls out the deployed ``eval.selection`` (argmax),
    ``first`` the sampler alone. A critic that prefers actions near 0.7 tells them apart."""
    import jax
    import jax.numpy as jnp
    from dmc_jax.data import episodes as ep_lib
    from dmc_jax.data import replay
    from dmc_jax.envs import nav1d
    from dmc_jax.train import builders

    c = smoke(online__enabled=True, online__episodes=4)
    self.assertEqual(c.eval.selection, "argmax")
    dmc = builders.make_dmc(c, nav1d.OBS_DIM, nav1d.ACT_DIM)
    params = jax.jit(dmc.init)(jax.random.PRNGKey(0))
    ident = lambda d: ep_lib.Normalizer(jnp.zeros(d), jnp.ones(d))
    q_fn = lambda qp, obs, act: -((act[:, 0] - 0.7) ** 2)[None]  # one head
    v_fn = lambda vp, obs: jnp.zeros(obs.shape[0])

    def collect(selection):
      c.align.online.selection = selection
      online = align_lib._Online(c, dmc, ident(nav1d.OBS_DIM), ident(nav1d.ACT_DIM), q_fn,
                                 v_fn, None)
      buf = replay.init(4096, nav1d.OBS_DIM, nav1d.ACT_DIM)
      buf, _ = online.collect(params, (None, None), jax.random.PRNGKey(1), buf)
      return np.asarray(buf["actions"][:int(buf["size"])])

    deployed, argmax, first = collect(""), collect("argmax"), collect("first")
    self.assertGreater(len(first), 0)
    np.testing.assert_array_equal(deployed, argmax)
    # argmax picks the candidate nearest 0.7 of c.eval.num_candidates; first does not.
    self.assertLess(np.mean(np.abs(argmax - 0.7)), 0.8 * np.mean(np.abs(first - 0.7)))
    with self.assertRaisesRegex(ValueError, r"align.online.selection='best'.*eval.selection"):
      validation.validate_config(smoke(online__enabled=True, online__selection="best"))


class SplitHeadsTest(absltest.TestCase):
  """``critic.split_heads``: alignment rewards combine the first half of the Q heads, the
  deployed selection the second half."""

  def test_head_q_fn_takes_each_half(self):
    import jax.numpy as jnp
    from dmc_jax.critics import selection as sel
    q_fn = lambda p, o, a: jnp.arange(10.0)[:, None] + 0 * a[:, 0]
    a = jnp.zeros((3, 1))
    np.testing.assert_array_equal(sel.head_q_fn(q_fn, 10, True, "reward")(None, None, a)[:, 0],
                                  np.arange(5.0))
    np.testing.assert_array_equal(sel.head_q_fn(q_fn, 10, True, "select")(None, None, a)[:, 0],
                                  np.arange(5.0, 10.0))
    for use in ("reward", "select"):
      self.assertIs(sel.head_q_fn(q_fn, 10, False, use), q_fn)
    with self.assertRaisesRegex(ValueError, "num_q >= 4"):
      sel.head_q_fn(q_fn, 2, True, "reward")
    with self.assertRaisesRegex(ValueError, "head use"):
      sel.head_q_fn(q_fn, 10, True, "both")

  def test_the_reward_and_the_controller_listen_to_different_heads(self):
    """Heads 0-4 prefer actions near +0.7, heads 5-9 near -0.7. Split: the alignment reward
    ranks +0.7 above -0.7 and the deployed argmax picks candidates nearer -0.7; swapping the
    halves fails both. Not split: one combined critic for both."""
    import jax
    import jax.numpy as jnp
    from dmc_jax.data import episodes as ep_lib
    from dmc_jax.envs import nav1d
    from dmc_jax.eval import evaluators
    from dmc_jax.train import builders

    def q_fn(qp, obs, act):
      pos = -((act[:, 0] - 0.7) ** 2)
      neg = -((act[:, 0] + 0.7) ** 2)
      return jnp.concatenate([jnp.broadcast_to(pos, (5,) + pos.shape),
                              jnp.broadcast_to(neg, (5,) + neg.shape)])
    v_fn = lambda vp, obs: jnp.zeros(obs.shape[0])
    ident = lambda d: ep_lib.Normalizer(jnp.zeros(d), jnp.ones(d))
    c = smoke()
    c.critic.num_q, c.critic.q_agg, c.critic.split_heads = 10, "lcb", True
    validation.validate_config(c)
    dmc = builders.make_dmc(c, nav1d.OBS_DIM, nav1d.ACT_DIM)
    params = jax.jit(dmc.init)(jax.random.PRNGKey(0))
    obs = jnp.zeros((64, dmc.history, nav1d.OBS_DIM))

    def chosen(config):
      act = evaluators.make_act(config, dmc, ident(nav1d.OBS_DIM), ident(nav1d.ACT_DIM), q_fn,
                                v_fn)
      acts, _ = jax.jit(act)(params, (None, None), jax.random.PRNGKey(1), obs)
      return np.asarray(acts[:, 0, 0])

    picked = chosen(c)
    self.assertLess(np.mean(np.abs(picked + 0.7)), np.mean(np.abs(picked - 0.7)))
    def reward(config, a):  # DP: x_0 is the action chunk
      fn = align_lib.make_reward_fn(config, dmc, q_fn, v_fn, ident(nav1d.OBS_DIM),
                                    ident(nav1d.ACT_DIM))
      x_0 = jnp.full((1, dmc.horizon, nav1d.ACT_DIM), a)
      return float(fn(params, (None, None), x_0, obs[:1])[0])

    self.assertGreater(reward(c, 0.7), reward(c, -0.7) + 0.5)
    # Not split: the reward and the controller see the same ten heads (this critic is
    # symmetric, so the reward cannot tell +0.7 from -0.7, and neither can argmax).
    c.critic.split_heads = False
    self.assertAlmostEqual(reward(c, 0.7), reward(c, -0.7), places=5)
    c.critic.num_q = 2
    c.critic.split_heads = True
    with self.assertRaisesRegex(ValueError, r"critic.split_heads.*num_q >= 4"):
      validation.validate_config(c)


class AlignConfigTest(absltest.TestCase):

  def check(self, message, **align):
    with self.assertRaisesRegex(ValueError, message):
      validation.validate_config(smoke(**align))

  def test_bad_align_values_name_the_key(self):
    self.check(r"align.stages=.*stage names", stages=("rl", "ppo"))
    self.check(r"align.rl.method='trpo'.*one of", rl__method="trpo")
    self.check(r"align.rl.num_grad_steps=\(9,\).*\[0, 4\]", rl__num_grad_steps=(9,))
    self.check(r"align.dpo.beta=-1.0.*positive", dpo__beta=-1.0)
    self.check(r"align.dpo.num_samples=1", dpo__num_samples=1)
    self.check(r"align.rl.step_groups=3.*divisor", rl__step_groups=3)
    self.check(r"align.parallel='tpu'", parallel="tpu")
    self.check(r"align.cascade.share_step=4", cascade__share_step=4)
    self.check(r"align.sft.keep_frac=0.0", sft__keep_frac=0.0)
    self.check(r"align.env_guard=-1.0.*non-negative", env_guard=-1.0)
    self.check(r"align.guard_selections=\('best',\).*other than curve_selection",
               guard_selections=("best",))
    self.check(r"align.guard_selections=\('first',\)", guard_selections=("first",))
    self.check(r"align.curve_selection=.best.*one of", curve_selection="best")
    self.check(r"align.online.mix=0.0.*\(0, 1\]", online__mix=0.0)
    self.check(r"align.online.episodes=0.*positive integer", online__episodes=0)
    self.check(r"align.seed=-1.*integer in \[0, 2\*\*31\)", seed=-1)
    c = smoke()
    c.diffusion.sampler = "ode"
    with self.assertRaisesRegex(ValueError, r"align.rl.method='ppo'.*qgrad"):
      validation.validate_config(c)

  def test_unknown_align_key(self):
    c = smoke()
    with c.unlocked():
      c.align.rl.betta = 1.0
    with self.assertRaisesRegex(ValueError, r"config.align.rl.betta is not a known key"):
      validation.validate_config(c)


if __name__ == "__main__":
  absltest.main()
