"""Shared fixtures: a small textbook-molecule table written here, and the real ESOL file when it is present."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from rdkit import Chem
from rdkit.Chem import Crippen

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("ZOO_DATA", ROOT.parent / "shared" / "data"))
ESOL = SHARED_DATA / "moleculenet_esol" / "delaney-processed.csv"

TEXTBOOK = [
    "C", "CC", "CCC", "CCCC", "CCCCC", "CCCCCC", "CCO", "CCCO", "CCCCO", "CC(C)O", "CC(=O)O", "CCC(=O)O",
    "c1ccccc1", "Cc1ccccc1", "CCc1ccccc1", "Oc1ccccc1", "Nc1ccccc1", "Clc1ccccc1", "c1ccc2ccccc2c1",
    "c1ccncc1", "C1CCCCC1", "C1CCOC1", "CC(C)=O", "CCOCC", "CCOC(C)=O", "ClCCl", "ClC(Cl)Cl", "OCCO",
    "OCC(O)CO", "CC(=O)Oc1ccccc1C(=O)O", "CC(=O)Nc1ccc(O)cc1", "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
    "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "c1ccc2cc3ccccc3cc2c1", "Clc1c(Cl)c(Cl)c(Cl)c(Cl)c1Cl", "OC1CCCCC1",
    "CCCCCCCC", "CCCCCCCCO", "NCCO", "CN(C)C",
]

# Small widths keep every training test to seconds.
TINY = {
    "encoders.molecule-dmpnn.hidden": 32,
    "fusion.dim": 32,
    "head.hidden": 32,
    "train.batch_size": 16,
}


@pytest.fixture
def textbook_rows() -> list[dict]:
    """Textbook molecules with Crippen logP (computed, deterministic) as the target."""
    return [{"smiles": s, "measured log solubility in mols per litre": Crippen.MolLogP(Chem.MolFromSmiles(s))}
            for s in TEXTBOOK]


@pytest.fixture
def textbook_csv(tmp_path, textbook_rows) -> Path:
    path = tmp_path / "textbook.csv"
    lines = ["smiles,measured log solubility in mols per litre"]
    lines += [f"{r['smiles']},{r['measured log solubility in mols per litre']:.4f}" for r in textbook_rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def esol_csv() -> Path:
    if not ESOL.is_file():
        pytest.skip(f"real data not here: {ESOL}")
    return ESOL


@pytest.fixture(autouse=True)
def private_zoo_home(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's model store or feature cache."""
    monkeypatch.setenv("ZOO_HOME", str(tmp_path_factory.mktemp("zoo-home")))
