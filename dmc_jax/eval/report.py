"""The alignment report: reads finished workdirs, writes the before -> after tables and curves.

A run is the ``results.json`` of an aligned workdir (:func:`load_run`), or the same dict in
memory. :func:`write_report` writes ``OUT/report.md``:

* a table in the form of the seed paper's Tables 2-3 (rows: dataset × environment; columns:
  model / sampler / selection; cells: return "before -> after", mean ± std over episode seeds;
  the success rate where the env reports one),
* a detailed table (95 % interval, change of the mean and of the spread, success rate, D4RL
  normalised score, plan coherency, the visits the environment guard reverted, wall-clock
  time),
* the average change in return and in the spread of returns across all rows,

and ``OUT/align_curves.png``: every run's alignment curve (environment return after each stage
visit, mean ± 1 std), with a dashed line where online fine-tuning starts. The main job writes
the same detailed table and curve for its own run (``align_results.md``, ``align_curve.png``);
``python -m launch.report`` writes the report over many workdirs.
"""
import glob
import json
import os
from typing import NamedTuple, Optional, Sequence

import numpy as np

MODEL_NAMES = {"diffuser": "Diffuser", "decision_diffuser": "DD", "diffusion_policy": "DP"}


# ------------------------------------------------------------------------------ reading
def find_workdirs(paths) -> list:
  """Workdirs holding an aligned ``results.json``, from workdirs, parents or globs (sorted,
  without duplicates)."""
  found = []
  for p in paths:
    for d in sorted(glob.glob(p)) or [p]:
      cands = [d] if os.path.exists(os.path.join(d, "results.json")) else sorted(
          os.path.dirname(f) for f in glob.glob(os.path.join(d, "*", "results.json")))
      found += [c for c in cands if c not in found]
  return found


def split_dataset(dataset_id: str) -> tuple:
  """``(environment, dataset)`` names from a Minari id (or path)."""
  parts = dataset_id.rstrip("/").split("/")
  name = parts[-1].rsplit("-v", 1)[0]
  if len(parts) >= 2 and parts[-2] == "nav1d":
    return "Nav1D", name
  if len(parts) >= 2:
    return parts[-2], name
  return "-", name


def online_start(workdir):
  """The alignment update after which online fine-tuning first ran (None if it did not)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    for line in f:
      row = json.loads(line)
      if any(k.startswith("align/") and k.endswith("/online_return") for k in row):
        return row["step"]
  return None


def reverted_visits(workdir) -> list:
  """The stage visits the environment guard reverted, as ``"stage (pass p)"``, from
  ``decisions.jsonl`` (empty if there is none)."""
  path = os.path.join(workdir, "decisions.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f]
  return [f"{r['stage']} (pass {r['pass']})" for r in rows if r.get("action") == "revert"]


def as_run(results: dict, workdir: str) -> dict:
  """A run from a workdir's ``results`` dict (the content of its ``results.json``)."""
  if "align" not in results:
    raise ValueError(f"{workdir}/results.json has no 'align' section: the run was not aligned "
                     "(align.stages=()) or has not finished")
  env, data = split_dataset(results["dataset"])
  seed, align_seed = run_seeds(workdir)
  return dict(results, workdir=workdir, env=env, data=data, seed=seed, align_seed=align_seed,
              online_start=online_start(workdir), reverted=reverted_visits(workdir),
              reused=reused_phases(workdir))


def reused_phases(workdir) -> list:
  """The pretraining phases the run started from another cell's checkpoints
  (``pretraining_reused.json``, written by ``launch.grid``): its wall-clock lacks them."""
  path = os.path.join(workdir, "pretraining_reused.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    reused = json.load(f)
  return [p for p in ("critic", "dmc") if p in reused]


def run_seeds(workdir) -> tuple:
  """The run's ``(config.seed, config.align.seed)`` from its ``config.json`` (0 for what
  it does not hold)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return 0, 0
  with open(path) as f:
    config = json.load(f)
  return int(config.get("seed", 0)), int(config.get("align", {}).get("seed", 0))


def seed_label(row):
  """A run's seed in the tables: the training seed, or ``"S/aN"`` for training seed S
  re-aligned with ``align.seed = N``."""
  seed, align_seed = row.get("seed", 0), row.get("align_seed", 0)
  return seed if not align_seed else f"{seed}/a{align_seed}"


def _seed_key(row):
  return row.get("seed", 0), row.get("align_seed", 0)


def load_run(workdir) -> dict:
  with open(os.path.join(workdir, "results.json")) as f:
    return as_run(json.load(f), workdir)


# ------------------------------------------------------------------------------ tables
def _ms(row, key="return"):
  return f"{row[f'{key}_mean']:.2f} ± {row[f'{key}_std']:.2f}"


def _success(b, a):
  if "success_rate" not in b:
    return ""
  return f" (success {b['success_rate']:.2f} -> {a['success_rate']:.2f})"


def verdict(before, after) -> str:
  """``higher`` / ``lower`` when the two 95 % CIs of the mean do not overlap, else ``same``.
  Only a ``higher`` after is bolded in the tables."""
  b_lo = before["return_mean"] - before.get("return_ci95", 0.0)
  b_hi = before["return_mean"] + before.get("return_ci95", 0.0)
  a_lo = after["return_mean"] - after.get("return_ci95", 0.0)
  a_hi = after["return_mean"] + after.get("return_ci95", 0.0)
  return "higher" if a_lo > b_hi else "lower" if a_hi < b_lo else "same"


def _after(b, a) -> str:
  v = verdict(b, a)
  return f"**{_ms(a)}**" if v == "higher" else f"{_ms(a)} (lower)" if v == "lower" else _ms(a)


def rows_of(runs) -> list:
  """One row per (run, selection)."""
  out = []
  for r in runs:
    for sel, row in r["align"].items():
      out.append({"env": r["env"], "data": r["data"], "model": MODEL_NAMES.get(r["model"],
                                                                               r["model"]),
                  "sampler": r["sampler"], "selection": sel, "seed": r.get("seed", 0),
                  "align_seed": r.get("align_seed", 0),
                  "before": row["before"],
                  "after": row["after"], "cascade": row.get("cascade"),
                  "time": r.get("wall_clock_s", float("nan")), "reused": r.get("reused", []),
                  "online_steps": r.get("online_env_steps"),
                  "reverted": r.get("reverted", [])})
  return out


def paper_table(rows) -> str:
  """Rows dataset × environment, columns model / sampler / selection: "before -> after"."""
  cols = sorted({(r["model"], r["sampler"], r["selection"]) for r in rows})
  keys = sorted({(r["data"], r["env"], _seed_key(r)) for r in rows})
  seeds = len({k[2] for k in keys}) > 1  # one row per training (and alignment) seed then
  cell = {(r["data"], r["env"], _seed_key(r), r["model"], r["sampler"], r["selection"]): r
          for r in rows}
  label = {_seed_key(r): seed_label(r) for r in rows}
  lines = ["| dataset | environment | " + " | ".join(f"{m} ({s}, {sel})" for m, s, sel in cols)
           + " |", "|---|---|" + "---|" * len(cols)]
  for data, env, seed in keys:
    cells = []
    for m, s, sel in cols:
      r = cell.get((data, env, seed, m, s, sel))
      cells.append("-" if r is None else
                   f"{_ms(r['before'])} -> {_after(r['before'], r['after'])}"
                   f"{_success(r['before'], r['after'])}")
    name = f"{data} (seed {label[seed]})" if seeds else data
    lines.append(f"| {name} | {env} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def detail_table(rows) -> str:
  lines = ["| dataset | environment | model | sampler | selection | before | after | after 95% CI "
           "| change | beyond the CIs | std before -> after | success before -> after | normalised score "
           "| plan coherency | cascade | reverted visits | time (s) | online env steps |",
           "|---" * 18 + "|"]
  for r in rows:
    b, a = r["before"], r["after"]
    succ = (f"{b['success_rate']:.2f} -> {a['success_rate']:.2f}"
            if "success_rate" in b else "-")
    score = (f"{b['normalized_score']:.1f} -> {a['normalized_score']:.1f}"
             if "normalized_score" in b else "-")
    coh = (f"{b['plan_coherency']:.2f} -> {a['plan_coherency']:.2f}"
           if "plan_coherency" in b else "-")
    cas = "-" if not r["cascade"] else _ms(r["cascade"])
    lines.append(
        f"| {r['data']} | {r['env']} | {r['model']} | {r['sampler']} | {r['selection']} | "
        f"{_ms(b)} | {_after(b, a)} | ± {a['return_ci95']:.2f} | "
        f"{a['return_mean'] - b['return_mean']:+.2f} | {verdict(b, a)} | {b['return_std']:.2f} -> "
        f"{a['return_std']:.2f} | {succ} | {score} | {coh} | {cas} | "
        f"{', '.join(r['reverted']) or '-'} | {r['time']:.0f}"
        f"{' (' + ' + '.join(r['reused']) + ' reused)' if r.get('reused') else ''} | "
        f"{'-' if r.get('online_steps') is None else r['online_steps']} |")
  return "\n".join(lines) + "\n"


def seed_groups(rows) -> dict:
  """Rows of the same cell (dataset, environment, model, sampler, selection) over training
  seeds and alignment seeds (``align.seed``): ``{cell: [row, ...]}`` sorted by seed."""
  groups = {}
  for r in rows:
    groups.setdefault((r["data"], r["env"], r["model"], r["sampler"], r["selection"]),
                      []).append(r)
  return {k: sorted(v, key=_seed_key) for k, v in sorted(groups.items())}


def seed_stats(group) -> dict:
  """Across training seeds: mean and std (ddof 1) of each seed's episode-mean return before
  and after, of the change, and the mean success rate where the env reports one."""
  b = np.array([r["before"]["return_mean"] for r in group])
  a = np.array([r["after"]["return_mean"] for r in group])
  sd = lambda x: float(np.std(x, ddof=1)) if len(x) > 1 else 0.0
  out = {"seeds": [seed_label(r) for r in group], "before_mean": float(b.mean()),
         "before_std": sd(b), "after_mean": float(a.mean()), "after_std": sd(a),
         "change_mean": float((a - b).mean()), "change_std": sd(a - b),
         "improved": int(np.sum(a > b))}
  if all("success_rate" in r["before"] for r in group):
    out["success_before"] = float(np.mean([r["before"]["success_rate"] for r in group]))
    out["success_after"] = float(np.mean([r["after"]["success_rate"] for r in group]))
  return out


def seed_table(rows) -> str:
  """One row per cell that ran with more than one training seed: before and after as mean ±
  std across seeds (each seed's value is its mean over episode seeds), the change, the mean
  success rate, and each seed's before -> after."""
  lines = ["| dataset | environment | model | sampler | selection | seeds | before | after | "
           "change | improved | success before -> after | per seed |", "|---" * 12 + "|"]
  for (data, env, model, sampler, sel), group in seed_groups(rows).items():
    if len(group) < 2:
      continue
    st = seed_stats(group)
    succ = (f"{st['success_before']:.2f} -> {st['success_after']:.2f}"
            if "success_before" in st else "-")
    per = "; ".join(f"{seed_label(r)}: {r['before']['return_mean']:.2f} -> "
                    f"{r['after']['return_mean']:.2f}" for r in group)
    lines.append(
        f"| {data} | {env} | {model} | {sampler} | {sel} | {len(group)} | "
        f"{st['before_mean']:.2f} ± {st['before_std']:.2f} | "
        f"{st['after_mean']:.2f} ± {st['after_std']:.2f} | "
        f"{st['change_mean']:+.2f} ± {st['change_std']:.2f} | {st['improved']}/{len(group)} | "
        f"{succ} | {per} |")
  return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def relative_spread(row) -> float:
  """The paper's measure of spread: the std of the return as a percentage of its mean
  (NaN where the mean is 0)."""
  m = abs(row["return_mean"])
  return float("nan") if m == 0 else 100.0 * row["return_std"] / m


def selection_groups(rows) -> dict:
  """Rows by (dataset, environment, selection): ``{key: [row, ...]}``, sorted."""
  groups = {}
  for r in rows:
    groups.setdefault((r["data"], r["env"], r["selection"]), []).append(r)
  return dict(sorted(groups.items()))


def selection_stats(group) -> dict:
  """Over the cells of one dataset and selection: how many rose / fell with non-overlapping
  95 % CIs, how many ended with the after mean above / below the before-CI (issue #14's
  "above / not below `argmax` before outside its CI", which can hold while the CIs
  overlap), the mean change, and the mean relative spread (std as % of the mean, the
  paper's 38.1 % -> 5.3 %) before and after."""
  b = [r["before"] for r in group]
  a = [r["after"] for r in group]
  v = [verdict(x, y) for x, y in zip(b, a)]
  return {"cells": len(group), "higher_beyond_ci": v.count("higher"),
          "lower_beyond_ci": v.count("lower"),
          "above_before_ci": int(sum(y["return_mean"] > x["return_mean"] + x.get("return_ci95", 0.0)
                                     for x, y in zip(b, a))),
          "below_before_ci": int(sum(y["return_mean"] < x["return_mean"] - x.get("return_ci95", 0.0)
                                     for x, y in zip(b, a))),
          "return_change": float(np.mean([y["return_mean"] - x["return_mean"]
                                          for x, y in zip(b, a)])),
          "spread_before_pct": float(np.nanmean([relative_spread(x) for x in b])),
          "spread_after_pct": float(np.nanmean([relative_spread(y) for y in a]))}


def selection_table(rows) -> str:
  """One row per dataset × environment × selection: the counts and the spread of
  :func:`selection_stats`."""
  lines = ["| dataset | environment | selection | cells | higher beyond the CIs | lower beyond "
           "the CIs | after above the before-CI | after below the before-CI | mean change | "
           "spread (std % of mean) before -> after |", "|---" * 10 + "|"]
  for (data, env, sel), group in selection_groups(rows).items():
    st = selection_stats(group)
    lines.append(f"| {data} | {env} | {sel} | {st['cells']} | {st['higher_beyond_ci']} | "
                 f"{st['lower_beyond_ci']} | {st['above_before_ci']} | {st['below_before_ci']} | "
                 f"{st['return_change']:+.2f} | {st['spread_before_pct']:.1f} % -> "
                 f"{st['spread_after_pct']:.1f} % |")
  return "\n".join(lines) + "\n"


def summary(rows) -> dict:
  """Average change of the mean return and of its std over all rows (and of the success rate
  over the rows that have one)."""
  d_mean = [r["after"]["return_mean"] - r["before"]["return_mean"] for r in rows]
  d_std = [r["after"]["return_std"] - r["before"]["return_std"] for r in rows]
  d_succ = [r["after"]["success_rate"] - r["before"]["success_rate"] for r in rows
            if "success_rate" in r["before"]]
  out = {"rows": len(rows), "return_change": float(np.mean(d_mean)),
         "std_change": float(np.mean(d_std)),
         "improved": int(sum(d > 0 for d in d_mean)),
         "higher_beyond_ci": int(sum(verdict(r["before"], r["after"]) == "higher" for r in rows)),
         "lower_beyond_ci": int(sum(verdict(r["before"], r["after"]) == "lower" for r in rows))}
  if d_succ:
    out["success_change"] = float(np.mean(d_succ))
  return out


def summary_text(s) -> str:
  text = (f"Average over {s['rows']} rows: change of the mean return {s['return_change']:+.2f}, "
          f"change of the spread (std) {s['std_change']:+.2f}; the mean rose in "
          f"{s['improved']} of {s['rows']} rows ({s['higher_beyond_ci']} higher and "
          f"{s['lower_beyond_ci']} lower with non-overlapping 95 % CIs; only those higher are "
          "bold).")
  if "success_change" in s:
    text += f" Average change of the success rate: {s['success_change']:+.3f}."
  return text + "\n"


# ------------------------------------------------------------------------------ curves
class Panel(NamedTuple):
  """One curve: ``mean ± std`` at ``x``; optional per-point labels, horizontal reference
  lines ``[(name, value)]`` and a vertical marker ``(x, name)``."""
  x: Sequence[float]
  mean: Sequence[float]
  std: Sequence[float]
  title: str
  xlabel: str
  ylabel: str = "return (mean ± 1 std)"
  labels: Optional[Sequence[str]] = None
  hlines: Sequence[tuple] = ()
  vline: Optional[tuple] = None


def curve_figure(panels, ncol: int = 4, panel_size=(3.3, 2.8), fontsize: int = 7):
  """A matplotlib ``Figure`` with one axes per :class:`Panel` (the one curve plotter of the job
  and the report). Made without pyplot, so it never touches the process-wide backend: a
  notebook shows it inline, a shell saves it (``fig.savefig``)."""
  from matplotlib.figure import Figure
  n = len(panels)
  ncol = max(1, min(n, ncol))
  nrow = -(-n // ncol)
  fig = Figure(figsize=(panel_size[0] * ncol, panel_size[1] * nrow))
  axes = fig.subplots(nrow, ncol, squeeze=False)
  for ax in axes.flat[n:]:
    ax.axis("off")
  for ax, p in zip(axes.flat, panels):
    x, m, sd = (np.asarray(v, float) for v in (p.x, p.mean, p.std))
    ax.plot(x, m, marker="o", markersize=3)
    ax.fill_between(x, m - sd, m + sd, alpha=0.25)
    for xi, yi, label in zip(x, m, p.labels or ()):
      ax.annotate(label, (xi, yi), fontsize=fontsize - 1, textcoords="offset points",
                  xytext=(2, 3))
    legend = False
    for (name, value), style in zip(p.hlines, ("--", ":", "-.")):
      if value is not None:
        ax.axhline(value, color="gray", linestyle=style, label=name)
        legend = True
    if p.vline is not None:
      ax.axvline(p.vline[0], color="gray", linestyle="--", linewidth=1, label=p.vline[1])
      legend = True
    if legend:
      ax.legend(fontsize=fontsize - 1)
    ax.set_title(p.title, fontsize=fontsize + 1)
    ax.set_xlabel(p.xlabel, fontsize=fontsize)
    ax.set_ylabel(p.ylabel, fontsize=fontsize)
    ax.tick_params(labelsize=fontsize - 1)
  fig.tight_layout()
  return fig


def align_panel(run) -> Panel:
  """A run's alignment curve: the return after each stage visit, labelled by stage."""
  c = run["align_curve"]
  labels = [str(p[5]).split(" ")[0] + (" (reverted)" if "reverted" in str(p[5]) else "")
            for p in c]
  vline = None if run.get("online_start") is None else (run["online_start"],
                                                        "online fine-tuning")
  return Panel([p[0] for p in c], [p[1] for p in c], [p[2] for p in c],
               f"{MODEL_NAMES.get(run['model'], run['model'])} / {run['env']} {run['data']}",
               "alignment update", labels=labels, vline=vline)


def learning_panel(results) -> Panel:
  """A job's pretraining curve (``results["curve"]``) with the dataset's and the random
  policy's returns as reference lines."""
  steps, mean, std = zip(*results["curve"])
  return Panel(steps, mean, std, f"{results['model']} on {results['dataset']}",
               "training step", "episode return (mean ± 1 std)",
               hlines=(("dataset", results["dataset_return"]),
                       ("random policy", results["random_return"])))


def plot_curves(runs, path=None):
  """Every run's alignment curve; saved to ``path`` when given. Returns the ``Figure``."""
  fig = curve_figure([align_panel(r) for r in runs])
  if path is not None:
    fig.savefig(path, dpi=90)
  return fig


# ------------------------------------------------------------------------ results table
def results_table(results) -> str:
  """One row per job ``results`` dict (``results.json``): the pretrained model's return,
  its 95 % CI, the dataset's and the random policy's returns, and the planners' coherency."""
  cols = ["dataset", "model", "sampler", "selection", "return", "95% CI", "dataset return",
          "random return"]
  extra = [k for k in ("plan_coherency", "behaviour_density") if any(k in r for r in results)]
  cols += [k.replace("_", " ") for k in extra]
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in results:
    vals = [r["dataset"], r["model"], r["sampler"], r["selection"],
            f"{r['return_mean']:.2f} ± {r['return_std']:.2f}", f"± {r['return_ci95']:.2f}",
            f"{r['dataset_return']:.2f}",
            "-" if r["random_return"] is None else f"{r['random_return']:.2f}"]
    vals += [f"{r[k]:.3f}" if k in r else "-" for k in extra]
    lines.append("| " + " | ".join(str(v) for v in vals) + " |")
  return "\n".join(lines) + "\n"


def _seed_section(rows) -> str:
  table = seed_table(rows)
  if not table:
    return ""
  realigned = any(r.get("align_seed", 0) for r in rows)
  head = "training and alignment seeds" if realigned else "training seeds"
  note = (" A seed `S/aN` is training seed S re-aligned with `align.seed = N` (the same "
          "pretrained model)." if realigned else "")
  return (f"## Across {head}\n\nMean ± std across {head} of each seed's mean "
          f"return over the episode seeds (std with ddof 1).{note}\n\n" + table + "\n")


def write_report(runs, out_dir, title="Alignment results") -> str:
  """Writes ``report.md`` and ``align_curves.png`` under ``out_dir``; returns the Markdown."""
  if not runs:
    raise ValueError("no finished, aligned workdirs to report on")
  os.makedirs(out_dir, exist_ok=True)
  rows = rows_of(runs)
  s = summary(rows)
  multi = {k: seed_stats(g) for k, g in seed_groups(rows).items() if len(g) > 1}
  if multi:
    names = ("data", "env", "model", "sampler", "selection")
    s["across_seeds"] = [dict(zip(names, k), **v) for k, v in multi.items()]
  s["by_selection"] = [dict(data=k[0], env=k[1], selection=k[2], **selection_stats(g))
                       for k, g in selection_groups(rows).items()]
  text = (f"# {title}\n\nBefore -> after alignment, mean ± std of the episode return over "
          f"episode seeds (same seeds before and after).\n\n{paper_table(rows)}\n"
          f"{detail_table(rows)}\n{summary_text(s)}\n"
          "## Per dataset and selection\n\nCells counted by the 95 % CIs of their mean "
          "return; the spread is the std over episode seeds as a percentage of the mean, "
          "averaged over the cells.\n\n" f"{selection_table(rows)}\n{_seed_section(rows)}"
          "![alignment curves](align_curves.png)\n\n"
          "Workdirs: " + ", ".join(f"`{r['workdir']}`" for r in runs) + "\n")
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(text)
  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump(s, f, indent=1)
  plot_curves(runs, os.path.join(out_dir, "align_curves.png"))
  return text
