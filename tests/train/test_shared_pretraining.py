"""Pretraining shared between cells: which checkpoints count as the same training, and a
job started from another cell's checkpoints ends with the numbers it would have computed."""
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from configs import nav1d as nav1d_config
from dmc_jax.models import generator as gen_lib
from dmc_jax.train import checkpoint, offline, phases
from launch import gridlib


def _saved(config):
  return json.loads(config.to_json())


class SameTrainingTest(absltest.TestCase):

  def test_the_denoising_samplers_train_with_one_loss(self):
    # The family map is only true while these samplers share the loss exactly.
    self.assertEqual(set(phases.SAMPLER_FAMILY), set(gen_lib.SAMPLERS))
    net = lambda p, x, t, cond=None, cond_mask=None: p * x + jnp.sin(
        t.astype(jnp.float32))[:, None, None]
    x0 = jax.random.normal(jax.random.key(0), (6, 4, 2))
    key = jax.random.key(1)
    losses = {s: float(gen_lib.make_generator(net, sampler=s, sample_steps=3).loss(
        0.7, key, x0, None)[0]) for s in gen_lib.SAMPLERS}
    for s, fam in phases.SAMPLER_FAMILY.items():
      same = [losses[o] == losses[s] for o, f in phases.SAMPLER_FAMILY.items() if f == fam]
      self.assertTrue(all(same), (s, losses))
    self.assertNotEqual(losses["flow"], losses["ddim"])

  def test_which_checkpoints_count_as_the_same_training(self):
    old = _saved(nav1d_config.get_config("diffuser,full,smoke"))
    check = lambda new, phase: phases.check_same_config(
        old, new, "wd", ignore=phases.PHASE_IGNORED[phase], same_family=True)
    for s in ("ddpm", "sde", "ode"):
      c = nav1d_config.get_config("diffuser,full,smoke")
      c.diffusion.sampler, c.diffusion.sample_steps, c.align.rl.method = s, 7, "ppo"
      check(c, "dmc")
      check(c, "critic")
    flow = nav1d_config.get_config("diffuser,full,smoke")
    flow.diffusion.sampler = "flow"
    with self.assertRaisesRegex(checkpoint.CheckpointMismatchError,
                                r"diffusion.sampler: 'denoising' \(checkpoint\) vs 'flow'"):
      check(flow, "dmc")
    check(flow, "critic")  # the critic never sees the DMC
    for model in ("dd", "dp"):
      other = nav1d_config.get_config(f"{model},full,smoke")
      check(other, "critic")
      with self.assertRaises(checkpoint.CheckpointMismatchError):
        check(other, "dmc")
    for key, value in (("critic.expectile", 0.5), ("data.dataset", "partial"), ("seed", 3),
                       ("train.parallel", "none")):
      c = nav1d_config.get_config("diffuser,full,smoke")
      *group, name = key.split(".")
      (c[group[0]] if group else c)[name] = value
      with self.assertRaisesRegex(checkpoint.CheckpointMismatchError, key):
        check(c, "critic")
      with self.assertRaisesRegex(checkpoint.CheckpointMismatchError, key):
        check(c, "dmc")
    # A workdir itself (its config.json) keeps its sampler: no family there.
    ddpm = nav1d_config.get_config("diffuser,full,smoke")
    ddpm.diffusion.sampler = "ddpm"
    with self.assertRaisesRegex(checkpoint.CheckpointMismatchError, "diffusion.sampler"):
      phases.check_same_config(old, ddpm, "wd")


class ReuseTest(absltest.TestCase):

  def test_a_job_started_from_another_cells_checkpoints_computes_the_same(self):
    def config(sampler):
      c = nav1d_config.get_config("dp,full,smoke")
      c.critic.steps, c.train.steps, c.train.log_every, c.train.eval_every = 60, 40, 20, 20
      c.eval.num_episodes, c.align.stages, c.diffusion.sampler = 4, (), sampler
      return c

    root = tempfile.mkdtemp()
    wd = lambda name: os.path.join(root, name)
    offline.train_and_evaluate(config("ddim"), wd("ddim"))
    alone = offline.train_and_evaluate(config("ddpm"), wd("ddpm_alone"))
    # Nothing to take from a cell trained otherwise (flow: another loss) but its critic.
    self.assertEqual(set(phases.reuse_pretraining(config("flow"), wd("flow"),
                                                  [wd("ddim")])), {"critic"})
    # The grid's dry run (`--pretrained_from`) names what the run will copy.
    plan = gridlib.plan([(wd("ddpm"), config("ddpm")), (wd("flow2"), config("flow"))],
                        sources=[wd("flow"), wd("ddim")])
    self.assertEqual(plan, [{"critic": wd("flow/checkpoints/critic/60"),
                             "dmc": wd("ddim/checkpoints/dmc/40")},
                            {"critic": wd("flow/checkpoints/critic/60"), "dmc": None}])
    self.assertIn("| ddpm | from " + wd("flow/checkpoints/critic/60"), gridlib.plan_text(
        [(wd("ddpm"), config("ddpm"))], sources=[wd("flow"), wd("ddim")]))
    copied = phases.reuse_pretraining(config("ddpm"), wd("ddpm"), [wd("flow"), wd("ddim")])
    # The first source with the phase finished the same way: the flow cell's copied critic.
    self.assertEqual(copied, {"critic": wd("flow/checkpoints/critic/60"),
                              "dmc": wd("ddim/checkpoints/dmc/40")})
    shared = offline.train_and_evaluate(config("ddpm"), wd("ddpm"))
    for k in ("return_mean", "return_std"):
      self.assertEqual(shared[k], alone[k])
    self.assertNotEqual(alone["return_mean"], json.load(open(wd("ddim/results.json")))[
        "return_mean"])  # the evaluation is the cell's own sampler's
    rows = [json.loads(line) for line in open(wd("ddpm/metrics.jsonl"))]
    self.assertFalse([r for r in rows if any(k.startswith(("train/", "critic/")) for k in r)])
    # Its learning curve is the final point alone (the others were the source's sampler's).
    self.assertEqual([tuple(p) for p in shared["curve"]], [tuple(alone["curve"][-1])])
    # A workdir that already holds a job is never written into.
    self.assertEqual(phases.reuse_pretraining(config("ddpm"), wd("ddpm"), [wd("ddim")]), {})
    leaves = lambda d: jax.tree.leaves(checkpoint.Checkpointer(d).restore_untyped())
    for a, b in zip(leaves(wd("ddpm/checkpoints/dmc")), leaves(wd("ddpm_alone/checkpoints/dmc"))):
      np.testing.assert_array_equal(a, b)

  def test_an_alignment_seed_realigns_the_same_pretrained_model(self):
    """``align.seed`` on a cell's own checkpoints: the same pretrained model, the same
    before rows and tracked contexts; another alignment (adapters, after rows)."""
    def config(seed):
      c = nav1d_config.get_config("dp,full,smoke")
      c.critic.steps, c.train.steps, c.train.log_every, c.train.eval_every = 60, 40, 20, 20
      c.eval.num_episodes, c.align.stages, c.align.max_chunks = 4, ("rl",), 1
      c.align.min_chunks, c.align.updates_per_chunk, c.align.seed = 1, 2, seed
      return c

    root = tempfile.mkdtemp()
    wd = lambda name: os.path.join(root, name)
    base = offline.train_and_evaluate(config(0), wd("seed0"))
    self.assertEqual(set(phases.reuse_pretraining(config(1), wd("seed1"), [wd("seed0")])),
                     {"critic", "dmc"})  # the alignment seed is not a pretraining setting
    other = offline.train_and_evaluate(config(1), wd("seed1"))
    for sel in config(0).align.eval_selections:
      self.assertEqual(other["align"][sel]["before"], base["align"][sel]["before"], sel)
    track0 = lambda name: [json.loads(line) for line in open(wd(f"{name}/metrics.jsonl"))
                           if '"align/track_reward"' in line][0]["align/track_reward"]
    self.assertEqual(track0("seed1"), track0("seed0"))  # the reference on the same contexts
    lora = lambda name: jax.tree.leaves(checkpoint.Checkpointer(
        wd(f"{name}/checkpoints/align")).restore_untyped())
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(lora("seed0"), lora("seed1")) if np.size(a) > 1)
    self.assertGreater(diff, 0.0)  # another draw of the adapters' init and updates


if __name__ == "__main__":
  absltest.main()
