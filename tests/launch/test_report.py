"""The results report renders from synthetic workdirs, with figures computed from them."""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from absl.testing import absltest

from dmc_jax.eval import report


def _row(mean, std, **extra):
  return dict(return_mean=mean, return_std=std, return_ci95=1.96 * std / 4, **extra)


def _workdir(root, name, dataset, model, before, after, online_at=None, seed=None,
             align_seed=None):
  wd = os.path.join(root, name)
  os.makedirs(wd)
  if seed is not None:
    with open(os.path.join(wd, "config.json"), "w") as f:
      json.dump({"seed": seed, **({"align": {"seed": align_seed}} if align_seed else {})}, f)
  res = {"dataset": dataset, "model": model, "sampler": "ddim", "wall_clock_s": 12.0,
         "selection": "argmax", **before, "dataset_return": 0.5, "random_return": None,
         "align": {"first": {"before": before, "after": after}},
         "align_curve": [[0, before["return_mean"], before["return_std"], 0, 1, "reference"],
                         [20, after["return_mean"], after["return_std"], 0, 1, "rl (pass 0)"]]}
  with open(os.path.join(wd, "results.json"), "w") as f:
    json.dump(res, f)
  with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"step": 10, "align/rl/loss": 0.1}) + "\n")
    if online_at is not None:
      f.write(json.dumps({"step": online_at, "align/rl/online_return": 3.0}) + "\n")
  with open(os.path.join(wd, "decisions.jsonl"), "w") as f:
    f.write(json.dumps({"step": 20, "stage": "rl", "pass": 0, "action": "finish"}) + "\n")
    if online_at is None:
      f.write(json.dumps({"step": 20, "stage": "rl", "pass": 0, "action": "revert"}) + "\n")
  return wd


class ReportTest(absltest.TestCase):

  def test_report_from_synthetic_workdirs(self):
    with tempfile.TemporaryDirectory() as root:
      _workdir(root, "a", "dmc_jax/metaworld/button-press/medium-v0", "diffusion_policy",
               _row(100.0, 20.0, success_rate=0.25), _row(130.0, 10.0, success_rate=0.75),
               online_at=20)
      _workdir(root, "b", "dmc_jax/nav1d/full-v0", "diffuser",
               _row(8.0, 4.0, plan_coherency=0.5), _row(6.0, 5.0, plan_coherency=0.25))
      _workdir(root, "c", "dmc_jax/hopper/ars-v0", "decision_diffuser",
               _row(50.0, 5.0, normalized_score=2.0), _row(60.0, 3.0, normalized_score=2.3))
      with open(os.path.join(root, "c", "pretraining_reused.json"), "w") as f:
        json.dump({"critic": "x/checkpoints/critic/30000", "dmc": "x/checkpoints/dmc/4000"}, f)
      os.makedirs(os.path.join(root, "unfinished"))
      dirs = report.find_workdirs([root])
      self.assertLen(dirs, 3)
      runs = [report.load_run(d) for d in dirs]
      self.assertEqual(runs[0]["online_start"], 20)
      self.assertIsNone(runs[1]["online_start"])
      self.assertEqual((runs[0]["reverted"], runs[1]["reverted"]), ([], ["rl (pass 0)"]))
      out = os.path.join(root, "out")
      text = report.write_report(runs, out)
      rows = report.rows_of(runs)
      summary = json.load(open(os.path.join(out, "summary.json")))
      self.assertAlmostEqual(summary["return_change"], (30.0 - 2.0 + 10.0) / 3)
      self.assertAlmostEqual(summary["std_change"], (-10.0 + 1.0 - 2.0) / 3)
      self.assertAlmostEqual(summary["success_change"], 0.5)
      self.assertEqual(summary["improved"], 2)
      # Columns DD, DP, Diffuser (sorted); one row per dataset × environment.
      self.assertIn("| medium | button-press | - | 100.00 ± 20.00 -> **130.00 ± 10.00** "
                    "(success 0.25 -> 0.75) | - |", text)
      self.assertIn("| ars | hopper | 50.00 ± 5.00 -> **60.00 ± 3.00** | - | - |", text)
      self.assertIn("| full | Nav1D |", text)
      # Bold only beyond the CIs: Nav1D's 8 ± 4 -> 6 ± 5 (CIs overlap) is not bold.
      self.assertIn("8.00 ± 4.00 -> 6.00 ± 5.00 |", text)
      self.assertNotIn("**6.00", text)
      self.assertEqual((summary["higher_beyond_ci"], summary["lower_beyond_ci"]), (2, 0))
      self.assertEqual(report.verdict(_row(8.0, 1.0), _row(5.0, 1.0)), "lower")
      self.assertEqual(report.verdict(_row(5.0, 1.0), _row(8.0, 1.0)), "higher")
      self.assertIn("5.00 ± 1.00 (lower)", report.paper_table(
          [dict(rows[0], before=_row(8.0, 1.0), after=_row(5.0, 1.0))]))
      self.assertIn("0.50 -> 0.25 | - | rl (pass 0) | 12 |", text)  # coherency, reverted
      self.assertIn("| rl (pass 0) | 12 (critic + dmc reused) |", text)  # the Hopper run's
      self.assertIn("2.0 -> 2.3", text)  # normalised score
      self.assertIn("change of the mean return +12.67", text)
      self.assertGreater(os.path.getsize(os.path.join(out, "align_curves.png")), 1000)

  def test_per_selection_counts_and_relative_spread(self):
    """The per-dataset/selection summary against its definitions: CI verdicts, the after mean
    below the before-CI (which can happen while the CIs overlap), and std as % of the mean."""
    def row(mean, std, ci):
      return dict(return_mean=mean, return_std=std, return_ci95=ci)
    cells = [  # (before, after) of three `first` cells and one `argmax` cell on `full`
        (row(10.0, 5.0, 1.0), row(20.0, 1.0, 0.5)),   # higher beyond the CIs
        (row(10.0, 4.0, 1.0), row(8.5, 2.0, 1.0)),    # below the before-CI, CIs overlap
        (row(10.0, 2.0, 1.0), row(6.0, 3.0, 1.0)),    # lower beyond the CIs
        (row(20.0, 2.0, 0.5), row(20.7, 2.0, 0.5))]   # argmax: above the before-CI, overlap
    rows = [dict(data="full", env="Nav1D", selection="argmax" if i == 3 else "first",
                 before=b, after=a) for i, (b, a) in enumerate(cells)]
    groups = report.selection_groups(rows)
    self.assertEqual(list(groups), [("full", "Nav1D", "argmax"), ("full", "Nav1D", "first")])
    st = report.selection_stats(groups[("full", "Nav1D", "first")])
    self.assertEqual((st["cells"], st["higher_beyond_ci"], st["lower_beyond_ci"],
                      st["above_before_ci"], st["below_before_ci"]), (3, 1, 1, 1, 2))
    self.assertAlmostEqual(st["return_change"], np.mean([10.0, -1.5, -4.0]))
    self.assertAlmostEqual(st["spread_before_pct"], np.mean([50.0, 40.0, 20.0]))
    self.assertAlmostEqual(st["spread_after_pct"], np.mean([5.0, 100 * 2.0 / 8.5, 50.0]))
    # Before and after swapped: the verdicts swap and the spread runs the other way.
    swapped = report.selection_stats([dict(r, before=r["after"], after=r["before"])
                                      for r in groups[("full", "Nav1D", "first")]])
    self.assertEqual((swapped["higher_beyond_ci"], swapped["lower_beyond_ci"]), (1, 1))
    self.assertEqual((swapped["above_before_ci"], swapped["below_before_ci"]), (2, 1))
    self.assertAlmostEqual(swapped["spread_before_pct"], st["spread_after_pct"])
    table = report.selection_table(rows)
    self.assertIn("| full | Nav1D | first | 3 | 1 | 1 | 1 | 2 | +1.50 | 36.7 % -> 26.2 % |",
                  table)
    self.assertIn("| full | Nav1D | argmax | 1 | 0 | 0 | 1 | 0 | +0.70 | 10.0 % -> 9.7 % |",
                  table)

  def test_grid_reuses_finished_cells_and_reports(self):
    root_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with tempfile.TemporaryDirectory() as root:
      _workdir(root, "dp_button-press_medium_ddim", "dmc_jax/metaworld/button-press/medium-v0",
               "diffusion_policy", _row(1.0, 1.0, success_rate=0.0),
               _row(2.0, 1.0, success_rate=0.5))
      proc = subprocess.run(
          [sys.executable, "-m", "launch.grid", "--suite=metaworld", "--models=dp",
           "--datasets=button-press:medium", f"--workdir={root}"], cwd=root_dir,
          capture_output=True, text=True, timeout=300)
      self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
      text = open(os.path.join(root, "report.md")).read()
      self.assertIn("(success 0.00 -> 0.50)", text)
      table = open(os.path.join(root, "table.md")).read()
      self.assertIn("| dmc_jax/metaworld/button-press/medium-v0 | diffusion_policy | ddim | "
                    "argmax | 1.00 ± 1.00 | ± 0.49 | 0.50 | - |", table)
      proc = subprocess.run([sys.executable, "-m", "launch.report", root], cwd=root_dir,
                            capture_output=True, text=True, timeout=300)
      self.assertNotEqual(proc.returncode, 0)
      self.assertIn("--out", proc.stderr)

  def test_training_seeds_are_aggregated(self):
    root_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    befores, afters = [100.0, 80.0, 120.0], [130.0, 70.0, 150.0]
    succ_b, succ_a = [0.25, 0.5, 0.75], [1.0, 0.25, 1.0]
    with tempfile.TemporaryDirectory() as root:
      for seed in range(3):
        _workdir(root, f"dp_button-press_medium_ddim_seed{seed}",
                 "dmc_jax/metaworld/button-press/medium-v0", "diffusion_policy",
                 _row(befores[seed], 5.0, success_rate=succ_b[seed]),
                 _row(afters[seed], 5.0, success_rate=succ_a[seed]), seed=seed)
      # The grid names each seed's cell and reuses the finished ones.
      proc = subprocess.run(
          [sys.executable, "-m", "launch.grid", "--suite=metaworld", "--models=dp",
           "--datasets=button-press:medium", "--seed=0,1,2", f"--workdir={root}"],
          cwd=root_dir, capture_output=True, text=True, timeout=300)
      self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
      text = open(os.path.join(root, "report.md")).read()
      summary = json.load(open(os.path.join(root, "summary.json")))
    (st,) = summary["across_seeds"]
    self.assertEqual(st["seeds"], [0, 1, 2])
    self.assertAlmostEqual(st["before_mean"], 100.0)
    self.assertAlmostEqual(st["before_std"], float(np.std(befores, ddof=1)))
    self.assertAlmostEqual(st["after_mean"], float(np.mean(afters)))
    self.assertAlmostEqual(st["change_std"], float(np.std(np.subtract(afters, befores), ddof=1)))
    self.assertEqual(st["improved"], 2)  # seed 1 fell
    self.assertAlmostEqual(st["success_after"], 0.75)
    self.assertIn("## Across training seeds", text)
    self.assertIn("| 3 | 100.00 ± 20.00 | 116.67 ± 41.63 | +16.67 ± 23.09 | 2/3 | 0.50 -> 0.75 | "
                  "0: 100.00 -> 130.00; 1: 80.00 -> 70.00; 2: 120.00 -> 150.00 |", text)
    self.assertIn("| medium (seed 1) | button-press |", text)  # one paper-table row per seed

  def test_alignment_seeds_are_aggregated_with_their_training_seed(self):
    befores, afters = [20.0, 20.0, 22.0], [22.0, 18.0, 23.0]
    with tempfile.TemporaryDirectory() as root:
      for i, (seed, align_seed) in enumerate([(0, 0), (0, 2), (1, 0)]):
        _workdir(root, f"run{i}", "dmc_jax/nav1d/full-v0", "decision_diffuser",
                 _row(befores[i], 2.0), _row(afters[i], 2.0), seed=seed, align_seed=align_seed)
      runs = [report.load_run(d) for d in report.find_workdirs([root])]
      rows = report.rows_of(runs)
      (group,) = report.seed_groups(rows).values()
      self.assertEqual([report.seed_label(r) for r in group], [0, "0/a2", 1])
      st = report.seed_stats(group)
      self.assertEqual(st["improved"], 2)  # the re-aligned run fell
      self.assertAlmostEqual(st["after_mean"], 21.0)
      body = report.paper_table(rows).splitlines()[2:]  # one row per (training, align) seed
      self.assertLen(body, 3)
      for line, (label, b, a) in zip(body, (("0", 20, 22), ("0/a2", 20, 18), ("1", 22, 23))):
        self.assertTrue(line.startswith(f"| full (seed {label}) | Nav1D | {b:.2f} ± 2.00 -> "),
                        line)
        self.assertIn(f"{a:.2f} ± 2.00", line)
      self.assertIn("0/a2: 20.00 -> 18.00", report.seed_table(rows))
      self.assertIn("## Across training and alignment seeds", report._seed_section(rows))

  def test_results_table_and_figures(self):
    import matplotlib
    backend = matplotlib.get_backend()
    r = {"dataset": "d", "model": "m", "sampler": "ddim", "selection": "first",
         "return_mean": 2.0, "return_std": 1.0, "return_ci95": 0.25, "dataset_return": 1.5,
         "random_return": -1.0, "plan_coherency": 0.75, "curve": [[0, 1.0, 0.5], [10, 2.0, 1.0]]}
    rows = report.results_table([r, dict(r, model="n", random_return=None)]).splitlines()
    self.assertEqual(rows[0], "| dataset | model | sampler | selection | return | 95% CI | "
                              "dataset return | random return | plan coherency |")
    self.assertEqual(rows[2], "| d | m | ddim | first | 2.00 ± 1.00 | ± 0.25 | 1.50 | -1.00 | "
                              "0.750 |")
    self.assertIn("| n | ddim | first | 2.00 ± 1.00 | ± 0.25 | 1.50 | - |", rows[3])
    fig = report.curve_figure([report.learning_panel(r)] * 3, ncol=2)
    self.assertLen(fig.axes, 4)  # 2 × 2, the fourth hidden
    line = fig.axes[0].lines[0]
    self.assertEqual(list(line.get_ydata()), [1.0, 2.0])
    self.assertEqual([l.get_label() for l in fig.axes[0].lines[1:]], ["dataset",
                                                                     "random policy"])
    self.assertEqual(matplotlib.get_backend(), backend)  # never switched

  def test_unaligned_run_is_a_clear_error(self):
    with tempfile.TemporaryDirectory() as root:
      with open(os.path.join(root, "results.json"), "w") as f:
        json.dump({"dataset": "x/y-v0", "model": "dp"}, f)
      with self.assertRaisesRegex(ValueError, "has no 'align' section"):
        report.load_run(root)
      with self.assertRaisesRegex(ValueError, "no finished"):
        report.write_report([], root)


if __name__ == "__main__":
  absltest.main()
