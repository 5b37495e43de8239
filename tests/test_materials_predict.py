"""The materials tasks end to end through `zoo predict`: good cells predicted, bad ones reported per row."""
import csv
import math

import numpy as np
from pymatgen.core import Lattice, Structure

import zoo
from zoo.artifacts import save
from zoo.cli import main
from zoo.model import build_model
from tests.conftest import ROOT

CRYSTALS = ROOT / "examples" / "crystals"
SMALL = {"fusion.dim": 16, "fusion.heads": 2, "fusion.latents": 2, "head.hidden": 16,
         "encoders.crystal-chgnet.dim": 16, "encoders.composition.dim": 16, "encoders.composition.heads": 2}


def _saved(task, overrides, tmp_path):
    model = build_model(zoo.info(task, overrides=overrides))  # materials-property: two members
    for member in getattr(model, "members", [model]):
        member.head.fit(np.array([[0.0], [1.0]]))
    return save(model, tmp_path / task, metrics={})


def test_materials_property_predicts_cifs_and_reports_bad_structures(tmp_path, capsys):
    folder = _saved("materials-property", SMALL, tmp_path)
    disordered = Structure(Lattice.cubic(3.6), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]]).to_json()
    rows = [{"structure": str(CRYSTALS / f"{n}.cif")} for n in ("NaCl", "SrTiO3", "Si", "BaTiO3")]
    rows += [{"structure": str(tmp_path / "missing.cif")}, {"structure": disordered}, {"structure": ""}]
    with open(tmp_path / "in.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["structure"])
        writer.writeheader()
        writer.writerows(rows)
    assert main(["predict", str(folder), "--input", str(tmp_path / "in.csv"),
                 "--output", str(tmp_path / "out.csv")]) == 0
    with open(tmp_path / "out.csv") as f:
        out = list(csv.DictReader(f))
    assert len(out) == 7
    assert all(math.isfinite(float(r["e_form"])) and not r["error"] for r in out[:4])
    assert "no such file" in out[4]["error"]
    assert "disordered structure" in out[5]["error"]
    assert out[6]["error"] == "row: every input is empty ('structure')"
    assert "predicted 4 of 7 rows; 3 failed" in capsys.readouterr().err


def test_materials_bandgap_reports_unknown_elements_per_row(tmp_path, capsys):
    # materials-bandgap reads its formula with composition-chgnet (the plain composition encoder is not in it)
    folder = _saved("materials-bandgap", {"encoders.composition-chgnet.dim": 16, "encoders.composition-chgnet.heads": 2,
                                          "encoders.composition-chgnet.layers": 1, "fusion.dim": 16,
                                          "head.hidden": 16}, tmp_path)
    (tmp_path / "in.csv").write_text("composition\nNaCl\nXx2O\nGaAs\n")
    assert main(["predict", str(folder), "--input", str(tmp_path / "in.csv"),
                 "--output", str(tmp_path / "out.csv")]) == 0
    with open(tmp_path / "out.csv") as f:
        out = list(csv.DictReader(f))
    assert [bool(r["error"]) for r in out] == [False, True, False]
    assert "unknown element 'Xx'" in out[1]["error"]


def test_bundled_materials_models_predict_the_example_cells_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cifs = sorted(str(p) for p in CRYSTALS.glob("*.cif"))
    energies = zoo.load("materials-property").predict([{"structure": c} for c in cifs])
    assert len(energies) == 4 and all(math.isfinite(e["e_form"]) for e in energies)
    gaps = zoo.load("materials-bandgap").predict([{"composition": f} for f in ("GaAs", "Cu", "Si")])
    assert all(math.isfinite(g["gap"]) for g in gaps)
    assert gaps[1]["gap"] < gaps[0]["gap"]          # copper is a metal, gallium arsenide a semiconductor
