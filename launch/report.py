"""The results report over finished workdirs (SHELL over :mod:`dmc_jax.eval.report`).

  python -m launch.report --out=results/ WORKDIR_OR_GLOB [...]

Every argument is a workdir of ``launch.train`` / ``launch.align`` (one holding
``results.json`` with an ``align`` section), or a folder or glob whose sub-folders are.
Writes ``OUT/report.md`` (the seed paper's Tables 2-3 layout, a detailed table, the average
change in return and spread), ``OUT/align_curves.png`` and ``OUT/summary.json``.
"""
from absl import app, flags

from dmc_jax.eval import report

OUT = flags.DEFINE_string("out", None, "output folder of report.md and align_curves.png")
TITLE = flags.DEFINE_string("title", "Alignment results", "heading of report.md")


def main(argv):
  paths = argv[1:]
  if not OUT.value:
    raise app.UsageError("--out (the output folder) is required")
  if not paths:
    raise app.UsageError("pass workdirs (or folders / globs holding them)")
  dirs = report.find_workdirs(paths)
  if not dirs:
    raise app.UsageError(f"no workdir with a results.json under {paths}")
  print(report.write_report([report.load_run(d) for d in dirs], OUT.value, TITLE.value))


if __name__ == "__main__":
  app.run(main)
