"""The cells of a grid, the plan of which cells train and which reuse pretraining, and the run
that trains them and writes the report: shared by :mod:`launch.grid` (any models × samplers)
and :mod:`launch.align_table` (the paper's tables). No flags here; the launchers own them.
"""
import ast
import importlib
import json
import os
import time

from dmc_jax.eval import report
from dmc_jax.train import checkpoint, loop, phases

SUITES = {"nav1d": ["partial", "full"],
          "metaworld": [f"{t}:medium" for t in ("button-press", "drawer-open", "sweep-into",
                                                "plate-slide")],
          "mujoco": ["hopper:ars"]}


class GridError(ValueError):
  """A grid the launcher cannot build (an unknown override key, a missing source)."""


def set_override(config, item: str) -> None:
  """``KEY=VALUE`` (a Python literal; an empty value is an empty tuple) into ``config``."""
  key, _, text = item.partition("=")
  try:
    value = ast.literal_eval(text) if text else ()
  except (ValueError, SyntaxError):
    value = text
  *groups, name = key.split(".")
  node = config
  for g in groups:
    if g not in node:
      raise GridError(f"--override={item}: config has no key {key!r}")
    node = node[g]
  if name not in node:
    raise GridError(f"--override={item}: config has no key {key!r}")
  node[name] = value


def make_cells(root: str, suite: str, datasets, model_samplers, selections=None, seeds=(0,),
               overrides=(), align_seeds=(0,)):
  """``[(workdir, config)]``: every dataset × (model, sampler) × selection × training seed ×
  alignment seed. ``model_samplers``: ``[(model, [sampler, ...])]``. A cell is
  ``configs/SUITE.py:MODEL,DATASET`` (a ``:`` in a dataset entry becomes a ``,``) in
  ``root/MODEL_DATASET_SAMPLER[_SELECTION][_seedN][_alignM]`` (seed 0 alone, and alignment
  seed 0 alone, keep the name without a suffix). The cells of one training seed share their
  pretraining (``run(share=True)``), so alignment seeds re-align one pretrained model."""
  module = importlib.import_module(f"configs.{suite}")
  def parse(flag, values):
    try:
      out = [int(v) for v in values]
    except ValueError:
      out = []
    if not out or min(out) < 0 or len(set(out)) < len(out):
      raise GridError(f"--{flag}={','.join(map(str, values))}: distinct integers >= 0")
    return out
  seeds, align_seeds = parse("seed", seeds), parse("align_seed", align_seeds)
  out = []
  for dataset in datasets or SUITES[suite]:
    for model, samplers in model_samplers:
      for sampler in samplers:
        for selection in selections or [None]:
          for seed in seeds:
            for align_seed in align_seeds:
              c = module.get_config(f"{model},{dataset.replace(':', ',')}")
              c.diffusion.sampler, c.seed = sampler, seed
              name = f"{model}_{dataset.replace(':', '_')}_{sampler}"
              if selection is not None:
                c.eval.selection = selection
                name += f"_{selection}"
              if seeds != [0]:
                name += f"_seed{seed}"
              if align_seeds != [0]:
                name += f"_align{align_seed}"
              for item in overrides:
                set_override(c, item)
              if align_seeds != [0]:
                c.align.seed = align_seed
              out.append((os.path.join(root, name), c))
  return out


def plan(cells, sources=()) -> list:
  """For each cell, ``{phase: index of the earlier cell it reuses, the step directory of a
  finished checkpoint in ``sources`` (other grids' cell workdirs, ``--pretrained_from``) it
  reuses, or None (trains it)}`` for the critic and DMC phases, by the rule
  :func:`dmc_jax.train.phases.reuse_pretraining` applies at run time (the same settings but
  :data:`~dmc_jax.train.phases.PHASE_IGNORED`; samplers of one training family alike)."""
  flat = [json.loads(c.to_json()) for _, c in cells]
  total = {"critic": lambda c: c.critic.steps, "dmc": lambda c: c.train.steps}
  out = []
  for i, (_, config) in enumerate(cells):
    row = {}
    for name in ("critic", "dmc"):
      row[name] = None
      for j in range(i):
        # Compare with the cells that train it; only a checkpoint at this cell's own step
        # count is reused (the resume check lets the step count grow).
        if out[j][name] is not None or total[name](cells[j][1]) != total[name](config):
          continue
        try:
          phases.check_same_config(flat[j], config, "", ignore=phases.PHASE_IGNORED[name],
                                   same_family=True)
        except checkpoint.CheckpointMismatchError:
          continue
        row[name] = j
        break
      if row[name] is None and sources:
        row[name] = phases.find_pretrained(config, name, sources)
    out.append(row)
  return out


def plan_text(cells, sources=()) -> str:
  """The plan as a table: each cell, and for its critic and DMC 'train' or the cell (of this
  grid, or a checkpoint of ``sources``) reused."""
  p = plan(cells, sources)
  names = [os.path.basename(wd) for wd, _ in cells]
  lines = ["| cell | critic | dmc |", "|---|---|---|"]

  def col(v):
    if v is None:
      return "train"
    return f"from {names[v]}" if isinstance(v, int) else f"from {v}"

  for name, row in zip(names, p):
    cols = [col(row[k]) for k in ("critic", "dmc")]
    lines.append(f"| {name} | {cols[0]} | {cols[1]} |")
  n_c = sum(r["critic"] is None for r in p)
  n_d = sum(r["dmc"] is None for r in p)
  lines.append(f"\n{len(cells)} cells: {n_c} critic and {n_d} DMC trainings "
               "(cells already finished train less)")
  return "\n".join(lines)


SELECTIONS = ("first", "expectation", "argmax")
TABLES = {
    "2": ("Table 2: planning-based DMC (Diffuser, Decision Diffuser)",
          [("diffuser", ("ddpm", "ddim", "sde", "flow")), ("dd", ("ddpm", "ddim"))]),
    "3": ("Table 3: policy-based DMC (Diffusion Policy)", [("dp", ("ddim", "flow"))]),
}


def table_cells(root: str, tables, datasets, seeds=(0,), overrides=(), align_seeds=(0,)):
  """``(cells, title)`` of the given tables: every dataset × the tables' (model, sampler)
  pairs × training seed, each cell evaluating :data:`SELECTIONS` before and after
  alignment (``align.eval_selections``; overrides come after, so they may change it)."""
  unknown = [t for t in tables if t not in TABLES]
  if unknown:
    raise GridError(f"--table={','.join(tables)}: no table {unknown[0]!r} "
                    f"(choose from {', '.join(TABLES)})")
  model_samplers = [ms for t in tables for ms in TABLES[t][1]]
  overrides = [f"align.eval_selections={SELECTIONS!r}", *overrides]
  cells = make_cells(root, "nav1d", datasets, model_samplers, None, seeds, overrides,
                     align_seeds)
  return cells, "; ".join(TABLES[t][0] for t in tables) + " (Nav1D)"


def cell_dirs(roots) -> list:
  """Each root that is a cell workdir itself, or else the workdirs inside it."""
  out = []
  for root in roots:
    if os.path.isdir(os.path.join(root, "checkpoints")):
      out.append(root)
    elif os.path.isdir(root):
      out += sorted(os.path.join(root, d) for d in os.listdir(root)
                    if os.path.isdir(os.path.join(root, d, "checkpoints")))
    else:
      raise GridError(f"--pretrained_from={root}: no such directory")
  return out


def run(cells, root: str, title: str, *, share: bool = True, pretrained_from=()) -> str:
  """Trains every unfinished cell (a finished one, with ``results.json``, is reused; with
  ``share``, a fresh cell starts from an earlier cell's finished critic / DMC checkpoints
  when they were trained the same way), then writes ``root/table.md`` and, over the aligned
  cells, the report (:func:`dmc_jax.eval.report.write_report`). Returns the report's text
  (the table's when no cell aligned)."""
  sources = [wd for wd, _ in cells] + cell_dirs(pretrained_from)
  for wd, config in cells:
    if not os.path.exists(os.path.join(wd, "results.json")):
      t0 = time.time()
      if share:
        copied = phases.reuse_pretraining(config, wd, sources)
        if copied:
          phases.write_atomic(os.path.join(wd, "pretraining_reused.json"),
                              json.dumps(copied, indent=1))
          print(f"{os.path.basename(wd)}: reusing " + ", ".join(
              f"{k} {v}" for k, v in copied.items()), flush=True)
      loop.train_and_evaluate(config, wd)
      print(f"{os.path.basename(wd)}: {time.time() - t0:.0f} s", flush=True)
  results = []
  for wd, _ in cells:
    with open(os.path.join(wd, "results.json")) as f:
      results.append(json.load(f))
  os.makedirs(root, exist_ok=True)
  table = report.results_table(results)
  with open(os.path.join(root, "table.md"), "w") as f:
    f.write(table)
  aligned = [report.as_run(r, wd) for r, (wd, _) in zip(results, cells) if "align" in r]
  if not aligned:
    return table
  return table + "\n" + report.write_report(aligned, root, title)
