"""Checkpoints: checked restores, corrupt-step fallback, no NaN saved, skipped NaN updates."""
import glob
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest

from configs import nav1d as nav1d_config
from dmc_jax.critics import iql
from dmc_jax.data.episodes import Transitions
from dmc_jax.networks.critic import TwinQ, ValueNet
from dmc_jax.train import checkpoint, loop, phases
from dmc_jax.train import step as step_lib


def _state(shape=(3, 2), dtype=jnp.float32):
  return step_lib.create_train_state({"w": jnp.ones(shape, dtype), "b": jnp.zeros(2)},
                                     optax.adam(1e-3))


def _equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


class CheckpointerTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()
    self.ckpt = checkpoint.Checkpointer(self.dir, max_to_keep=2)
    self.addCleanup(self.ckpt.close)

  def test_round_trip_keeps_last_n(self):
    s1 = _state()
    s2 = s1.replace(params={"w": s1.params["w"] * 2, "b": s1.params["b"] + 1}, step=jnp.int32(7))
    self.ckpt.save(1, s1, {"a": 1})
    self.ckpt.save(2, s1, {"a": 2})
    self.ckpt.save(3, s2, {"a": 3})
    self.assertEqual(self.ckpt.all_steps(), [2, 3])
    out = self.ckpt.restore(_state())
    self.assertEqual((out.step, out.meta), (3, {"a": 3}))
    self.assertTrue(_equal(out.tree, s2))
    self.assertIsInstance(out.tree, step_lib.TrainState)

  def test_shape_and_dtype_mismatch_name_the_leaf(self):
    self.ckpt.save(1, _state())
    with self.assertRaisesRegex(checkpoint.CheckpointMismatchError,
                                r"params.w: checkpoint has float32\[3, 2\], expected "
                                r"float32\[4, 2\]"):
      self.ckpt.restore(_state((4, 2)))
    with self.assertRaisesRegex(checkpoint.CheckpointMismatchError,
                                r"params.w: checkpoint has float32\[3, 2\], expected bfloat16"):
      self.ckpt.restore(_state(dtype=jnp.bfloat16))
    with self.assertRaisesRegex(checkpoint.CheckpointMismatchError,
                                r"obs_norm.shift: missing from the checkpoint"):
      self.ckpt.restore({"s": _state(), "obs_norm": {"shift": jnp.zeros(4)}})
    self.assertEqual(self.ckpt.all_steps(), [1])  # a mismatch never deletes anything

  def test_truncated_latest_falls_back_to_previous(self):
    s1 = _state()
    self.ckpt.save(1, s1)
    self.ckpt.save(2, s1.replace(step=jnp.int32(2)))
    data = [f for f in glob.glob(os.path.join(self.dir, "2", "state", "**", "d", "*"),
                                 recursive=True) if os.path.isfile(f)]
    self.assertNotEmpty(data)
    for f in data:
      with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
    self.assertEqual(checkpoint.count_unreadable(self.dir), (1, 1))
    with self.assertLogs(level="WARNING") as logs:
      out = self.ckpt.restore(_state())
    self.assertEqual(out.step, 1)
    self.assertTrue(_equal(out.tree, s1))
    self.assertIn("unreadable", "".join(logs.output))
    self.assertEqual(self.ckpt.all_steps(), [1])
    self.ckpt.save(2, s1)  # the step can be written again
    self.assertEqual(self.ckpt.restore(_state()).step, 2)

  def test_half_written_metadata_falls_back(self):
    self.ckpt.save(1, _state())
    self.ckpt.save(2, _state())
    for f in glob.glob(os.path.join(self.dir, "2", "state", "_*")):
      if os.path.isfile(f):
        open(f, "w").close()
    self.assertEqual(self.ckpt.restore(_state()).step, 1)

  def test_nothing_readable_is_none_and_nan_is_never_saved(self):
    self.assertIsNone(self.ckpt.restore(_state()))
    bad = _state().replace(params={"w": jnp.full((3, 2), jnp.nan), "b": jnp.zeros(2)})
    with self.assertRaisesRegex(FloatingPointError, "refusing to save a non-finite state"):
      self.ckpt.save(5, bad)
    self.assertEqual(self.ckpt.all_steps(), [])


class NonFiniteUpdateTest(absltest.TestCase):

  def test_train_step_skips_a_nan_batch(self):
    loss_fn = lambda p, k, x: (jnp.mean((p["w"] * x) ** 2), {"loss": jnp.mean(x)})
    step = jax.jit(step_lib.make_train_step(loss_fn))
    st = step_lib.create_train_state({"w": jnp.ones(3)}, optax.adam(0.1))
    same, m = step(st, None, jnp.array([1.0, jnp.nan, 2.0]))
    self.assertTrue(_equal(same, st))
    self.assertEqual(float(m["nonfinite"]), 1.0)
    moved, m = step(st, None, jnp.array([1.0, 3.0, 2.0]))
    self.assertFalse(_equal(moved.params, st.params))
    self.assertEqual(int(moved.step), 1)
    self.assertEqual(float(m["nonfinite"]), 0.0)

  def test_iql_update_skips_a_nan_reward(self):
    q_mod, v_mod = TwinQ((8,)), ValueNet((8,))
    update = jax.jit(iql.make_iql_update(lambda p, o, a: q_mod.apply({"params": p}, o, a),
                                         lambda p, o: v_mod.apply({"params": p}, o)))
    st = iql.init_iql(jax.random.key(0), q_mod, v_mod, 2, 1, optax.adam(0.1), optax.adam(0.1))
    batch = Transitions(jnp.ones((4, 2)), jnp.ones((4, 1)), jnp.array([1.0, jnp.inf, 0, 0]),
                        jnp.ones((4, 2)), jnp.zeros(4))
    new, m = update(st, batch)
    self.assertEqual(float(m["nonfinite"]), 1.0)
    self.assertTrue(_equal(new, st))


class ResumeGuardsTest(absltest.TestCase):

  def test_other_config_in_the_workdir_is_an_error_before_any_work(self):
    wd = tempfile.mkdtemp()
    old = nav1d_config.get_config("dp,full,smoke")
    with open(os.path.join(wd, "config.json"), "w") as f:
      f.write(old.to_json(indent=1))
    before = sorted(os.listdir(wd))
    new = nav1d_config.get_config("dp,full,smoke")
    new.model.horizon = 6
    with self.assertRaisesRegex(checkpoint.CheckpointMismatchError,
                                r"different config \(model.horizon: 4 \(checkpoint\) vs 6"):
      loop.train_and_evaluate(new, wd)
    self.assertEqual(sorted(os.listdir(wd)), before)
    self.assertEqual(json.load(open(os.path.join(wd, "config.json")))["model"]["horizon"], 4)

  def test_sampling_only_keys_do_not_block_a_re_evaluation(self):
    # How the heads combine and the DDIM eta only change sampling and selection: a pretrained
    # workdir may be evaluated again with them changed. Anything the critic or the model was
    # trained with still blocks, and alignment (ignore=()) depends on the head combination.
    old = json.loads(nav1d_config.get_config("dp,full,smoke").to_json())
    new = nav1d_config.get_config("dp,full,smoke")
    new.critic.lcb_coef, new.critic.q_agg, new.diffusion.ddim_eta = 4.0, "min", 1.0
    phases.check_same_config(old, new, "wd")
    with self.assertRaisesRegex(checkpoint.CheckpointMismatchError, r"critic.lcb_coef: 1.0"):
      phases.check_same_config(old, new, "wd", ignore=())
    new.critic.expectile = 0.5
    with self.assertRaisesRegex(checkpoint.CheckpointMismatchError,
                                r"\(critic.expectile: 0.99 \(checkpoint\) vs 0.5 \(now\)\)"):
      phases.check_same_config(old, new, "wd")


if __name__ == "__main__":
  absltest.main()
