"""Starting `zoo` pays only for what the command uses: the heavy libraries of other modalities (pymatgen,
transformers, timm), of scoring (scikit-learn) and of plotting (matplotlib) stay unimported until needed."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

HEAVY = ("sklearn", "matplotlib", "pymatgen", "transformers", "timm")


def _imported_after(code: str, modules: tuple[str, ...] = HEAVY) -> list[str]:
    probe = f"import json, sys\n{code}\nprint(json.dumps([m for m in {modules!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_importing_the_cli_imports_no_heavy_library():
    assert _imported_after("import zoo.cli") == []


def test_a_molecule_prediction_imports_no_other_modality_or_scoring_library(tmp_path):
    table = tmp_path / "five.csv"
    table.write_text("smiles\nCCO\nc1ccccc1\nCC(=O)O\nOc1ccccc1\nC1CC\n")
    code = (f"from zoo.cli import main\nrc = main(['predict', 'molecule-solubility', '--input', {str(table)!r}, "
            f"'--output', {str(tmp_path / 'out.csv')!r}])\nassert rc == 0, rc")
    # nor pandas, which pyarrow imports on its first pa.array (0.3 s)
    assert _imported_after(code, HEAVY + ("pandas",)) == []


def test_the_zoo_command_quick_exit_keeps_its_output_and_exit_code(tmp_path):
    # `python -m zoo` ends like the installed script: exit handlers, flushed streams, no interpreter teardown
    table = tmp_path / "three.csv"
    table.write_text("smiles\nCCO\nc1ccccc1\nCC(=O)O\n")
    done = subprocess.run([sys.executable, "-m", "zoo", "predict", "molecule-solubility", "--input", str(table)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()
    assert len(rows) == 4 and rows[0].startswith('"smiles","logS"') and rows[3].startswith("CC(=O)O,")
    assert "predicted 3 of 3 rows" in done.stderr
    refused = subprocess.run([sys.executable, "-m", "zoo", "predict", "no-such-task", "--input", str(table)],
                             cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.startswith("zoo: error: unknown task 'no-such-task'")
