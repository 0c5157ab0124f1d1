"""Every notebook in ``notebooks/`` runs top to bottom in a fresh kernel (a failing cell
fails the test) and shows its plot inline."""
import glob
import os

import nbformat
from absl.testing import absltest, parameterized
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


class NotebookTest(parameterized.TestCase):

  def test_there_is_a_notebook(self):
    self.assertNotEmpty(NOTEBOOKS)

  @parameterized.parameters(*[(p,) for p in NOTEBOOKS])
  def test_runs(self, path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": ROOT}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    self.assertFalse([o for o in outputs if o.get("output_type") == "error"])
    self.assertTrue(any("image/png" in o.get("data", {}) for o in outputs))  # inline plot
    text = "".join(o.get("text", "") for o in outputs)
    self.assertIn("sampler before", text)


if __name__ == "__main__":
  absltest.main()
