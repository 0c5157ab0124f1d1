"""The tables' launcher (``launch.align_table``) and the grid plan (``launch.gridlib``): which
cells the paper's tables hold, which of them train the critic and the DMC, and the report
over finished cells."""
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest

from launch import gridlib
from tests.launch.test_report import _row, _workdir

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class AlignTableTest(absltest.TestCase):

  def test_tables_hold_the_papers_cells_and_share_pretraining_by_training_family(self):
    cells, title = gridlib.table_cells("/r", ["2", "3"], ["partial", "full"], seeds=(0, 1))
    names = [os.path.basename(wd) for wd, _ in cells]
    self.assertIn("Table 2", title)
    self.assertIn("Table 3", title)
    # 2 datasets × (Diffuser × 4 samplers + DD × 2 + DP × 2) × 2 training seeds.
    self.assertLen(cells, 2 * 8 * 2)
    self.assertLen(set(names), len(names))
    by_name = dict(zip(names, (c for _, c in cells)))
    c = by_name["diffuser_partial_sde_seed1"]
    self.assertEqual((c.diffusion.sampler, c.seed), ("sde", 1))
    self.assertEqual(c.model.kind, by_name["diffuser_full_ddim_seed0"].model.kind)
    self.assertNotEqual(c.model.kind, by_name["dp_full_flow_seed0"].model.kind)
    for _, config in cells:
      self.assertEqual(tuple(config.align.eval_selections), gridlib.SELECTIONS)

    p = dict(zip(names, gridlib.plan(cells)))
    src = lambda name, phase: None if p[name][phase] is None else names[p[name][phase]]
    # One critic per dataset and training seed, whatever the model or sampler.
    trains_critic = sorted(n for n in names if src(n, "critic") is None)
    self.assertEqual(trains_critic, ["diffuser_full_ddpm_seed0", "diffuser_full_ddpm_seed1",
                                     "diffuser_partial_ddpm_seed0",
                                     "diffuser_partial_ddpm_seed1"])
    self.assertEqual(src("dp_full_flow_seed1", "critic"), "diffuser_full_ddpm_seed1")
    # DDPM, DDIM and SDE train one network; flow its own; no sharing across models,
    # datasets or training seeds.
    self.assertEqual(src("diffuser_partial_ddim_seed0", "dmc"), "diffuser_partial_ddpm_seed0")
    self.assertEqual(src("diffuser_partial_sde_seed0", "dmc"), "diffuser_partial_ddpm_seed0")
    self.assertIsNone(src("diffuser_partial_flow_seed0", "dmc"))
    self.assertEqual(src("dd_full_ddim_seed1", "dmc"), "dd_full_ddpm_seed1")
    self.assertIsNone(src("dd_full_ddpm_seed1", "dmc"))
    self.assertIsNone(src("dp_partial_flow_seed0", "dmc"))
    self.assertIsNone(src("dp_partial_ddim_seed0", "dmc"))
    # Per dataset and seed: Diffuser (denoising, flow), DD, DP (ddim, flow).
    self.assertEqual(sum(src(n, "dmc") is None for n in names), 2 * 2 * 5)

  def test_a_pretraining_override_splits_the_plan(self):
    # An override of a pretraining key applies to every cell: still one critic per dataset.
    cells, _ = gridlib.table_cells("/r", ["3"], ["full"], overrides=["critic.steps=100"])
    self.assertEqual([r["critic"] for r in gridlib.plan(cells)], [None, 0])
    cells = (gridlib.table_cells("/r", ["3"], ["full"])[0]
             + gridlib.table_cells("/s", ["3"], ["full"], overrides=["critic.steps=100"])[0])
    self.assertEqual([r["critic"] for r in gridlib.plan(cells)], [None, 0, None, 2])
    with self.assertRaisesRegex(gridlib.GridError, "no table '4'"):
      gridlib.table_cells("/r", ["4"], ["full"])
    with self.assertRaisesRegex(gridlib.GridError, "critic.stepz"):
      gridlib.table_cells("/r", ["3"], ["full"], overrides=["critic.stepz=1"])

  def test_alignment_seeds_realign_one_pretrained_model(self):
    cells, _ = gridlib.table_cells("/r", ["3"], ["full"], seeds=(0, 1), align_seeds=(0, 2))
    names = [os.path.basename(wd) for wd, _ in cells]
    self.assertEqual(names[:4], ["dp_full_ddim_seed0_align0", "dp_full_ddim_seed0_align2",
                                 "dp_full_ddim_seed1_align0", "dp_full_ddim_seed1_align2"])
    by_name = dict(zip(names, (c for _, c in cells)))
    self.assertEqual((by_name["dp_full_ddim_seed1_align2"].seed,
                      by_name["dp_full_ddim_seed1_align2"].align.seed), (1, 2))
    p = dict(zip(names, gridlib.plan(cells)))
    # an alignment seed reuses its training seed's critic and DMC, never another seed's
    for phase in ("critic", "dmc"):
      self.assertEqual(names[p["dp_full_ddim_seed1_align2"][phase]], "dp_full_ddim_seed1_align0")
      self.assertIsNone(p["dp_full_ddim_seed1_align0"][phase])
    # one alignment seed alone keeps the plain names; bad lists are refused
    cells, _ = gridlib.table_cells("/r", ["3"], ["full"])
    self.assertEqual(os.path.basename(cells[0][0]), "dp_full_ddim")
    self.assertEqual(cells[0][1].align.seed, 0)
    for bad in (("0", "0"), ("-1",), ("x",)):
      with self.assertRaisesRegex(gridlib.GridError, "--align_seed=.*distinct integers"):
        gridlib.table_cells("/r", ["3"], ["full"], align_seeds=bad)

  def test_report_over_finished_cells(self):
    with tempfile.TemporaryDirectory() as root:
      for sampler, after in (("ddim", 9.0), ("flow", 7.0)):
        _workdir(root, f"dp_partial_{sampler}", "dmc_jax/nav1d/partial-v0", "diffusion_policy",
                 _row(5.0, 1.0), _row(after, 1.0))
      proc = subprocess.run(
          [sys.executable, "-m", "launch.align_table", "--table=3", "--datasets=partial",
           f"--workdir={root}"], cwd=ROOT_DIR, capture_output=True, text=True, timeout=300)
      self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
      text = open(os.path.join(root, "report.md")).read()
      self.assertIn("Table 3", text)
      self.assertIn("9.00 ± 1.00", text)
      self.assertIn("7.00 ± 1.00", text)
      proc = subprocess.run(
          [sys.executable, "-m", "launch.align_table", "--table=2,3", "--datasets=partial",
           "--dry_run", f"--workdir={root}"], cwd=ROOT_DIR, capture_output=True, text=True,
          timeout=300)
      self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
      self.assertIn("| dd_partial_ddim | from diffuser_partial_ddpm | from dd_partial_ddpm |",
                    proc.stdout)
      self.assertIn("8 cells: 1 critic and 5 DMC trainings", proc.stdout)


if __name__ == "__main__":
  absltest.main()
