"""The package's structure: no import cycles inside ``dmc_jax/`` (function-level imports
count), the library never imports the experiment configs or the launch scripts, and the pure
modules pull in no gymnasium."""
import ast
import os
import subprocess
import sys
import unittest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dmc_jax")


def _module_name(path, root):
  rel = os.path.relpath(path, os.path.dirname(root))[:-3].replace(os.sep, ".")
  return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def import_graph(root=ROOT):
  """``{module: {imported dmc_jax modules}}`` from every import statement of every file,
  wherever it sits (module level or inside a function). ``from a import b`` counts as an
  import of ``a.b`` when that is a module, else of ``a``."""
  files = {}
  for d, _, names in os.walk(root):
    for n in names:
      if n.endswith(".py"):
        files[_module_name(os.path.join(d, n), root)] = os.path.join(d, n)
  graph = {m: set() for m in files}
  outside = {m: set() for m in files}
  for mod, path in files.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    package = mod if path.endswith("__init__.py") else mod.rsplit(".", 1)[0]
    for node in ast.walk(tree):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          parts = package.split(".")
          base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                   for a in node.names]
      for t in targets:
        top = t.split(".")[0]
        if top in ("configs", "launch", "tests"):
          outside[mod].add(t)
        while t and t not in files:
          t = t.rsplit(".", 1)[0] if "." in t else ""
        if t and t != mod:
          graph[mod].add(t)
  return graph, outside


def cycles(graph):
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  sys.setrecursionlimit(10_000)
  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


class StructureTest(unittest.TestCase):

  def test_no_import_cycles(self):
    graph, _ = import_graph()
    self.assertIn("dmc_jax.train.offline", graph)
    self.assertEqual(cycles(graph), [])

  def test_cycle_finder_finds_a_function_level_cycle(self):
    # The checker itself: a cycle closed by an import inside a function is found.
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
      pkg = os.path.join(tmp, "dmc_jax")
      os.makedirs(pkg)
      open(os.path.join(pkg, "__init__.py"), "w").close()
      with open(os.path.join(pkg, "a.py"), "w") as f:
        f.write("from dmc_jax import b\n")
      with open(os.path.join(pkg, "b.py"), "w") as f:
        f.write("def f():\n  from dmc_jax.a import g\n")
      with open(os.path.join(pkg, "c.py"), "w") as f:
        f.write("from . import a\n")
      graph, _ = import_graph(pkg)
      self.assertEqual(cycles(graph), [["dmc_jax.a", "dmc_jax.b"]])
      self.assertEqual(graph["dmc_jax.c"], {"dmc_jax.a"})

  def test_library_imports_no_configs_or_launch(self):
    _, outside = import_graph()
    self.assertEqual({m: s for m, s in outside.items() if s}, {})

  def test_pure_env_and_core_import_no_gymnasium(self):
    code = ("import sys; import dmc_jax.envs.nav1d, dmc_jax.diffusion, dmc_jax.aligners.rl, "
            "dmc_jax.data.dataset_ids, dmc_jax.data.replay; "
            "print('gymnasium' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(ROOT))
    self.assertEqual(out.stdout.strip(), "False")


if __name__ == "__main__":
  unittest.main()
