"""Every prediction says how far to trust it: a regression row gets a sigma and a conformal interval, a class a
prediction set, and every row of a pooled-vector head a domain score; the summary behind them is saved with the
model (hash-checked), and a model saved without one still loads, says so, and can be given one."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

import zoo
from tests.conftest import TEXTBOOK, TINY
from zoo.cli import main
from zoo.trust import Trust

SETS = [f"--set={k}={v}" for k, v in TINY.items()] + ["--set=train.epochs=15", "--set=data.fractions=[0.5, 0.4, 0.1]"]
FAR = ["[Fe+2].[Cl-].[Cl-]", "[Pt](N)(N)(Cl)Cl", "FC(F)(F)C(F)(F)C(F)(F)C(F)(F)C(F)(F)C(F)(F)F"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trust") / "model"
    table = out.parent / "textbook.csv"
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows([["smiles", "measured log solubility in mols per litre"],
                                 *[[s, len(s) / 10] for s in TEXTBOOK]])
    assert main(["train", "molecule-solubility", "--data", str(table), "--out", str(out), *SETS]) == 0
    return out, table


def test_a_regression_row_gets_sigma_a_conformal_interval_and_a_domain_flag(trained):
    out, _ = trained
    model = zoo.load(out)
    rows = model.predict([{"smiles": s} for s in TEXTBOOK[:10] + FAR], interval=0.9)
    for row in rows:
        assert row["logS_sigma"] > 0 and row["logS_low"] < row["logS"] < row["logS_high"]
        assert row["domain_score"] >= 0 and row["in_domain"] == (row["domain_score"] <= 1)
    near, far = rows[:10], rows[10:]
    assert np.mean([r["in_domain"] for r in near]) >= 0.8 and not any(r["in_domain"] for r in far)
    assert min(r["domain_score"] for r in far) > max(r["domain_score"] for r in near)
    # an element no training molecule had puts a row out of domain and is named, whatever its distance
    assert [r["unseen_elements"] for r in far] == ["Fe", "Pt", "F"] and all(r["unseen_elements"] is None for r in near)
    narrower, wider = (model.predict([{"smiles": "CCO"}], interval=level)[0] for level in (0.5, 0.9))
    assert narrower["logS_high"] - narrower["logS_low"] < wider["logS_high"] - wider["logS_low"]


def test_the_cli_writes_the_trust_columns_and_refuses_a_coverage_it_cannot_give(trained, tmp_path, capsys):
    out, _ = trained
    queries = tmp_path / "q.csv"
    queries.write_text("smiles\nCCO\nnot a molecule\n")
    assert main(["predict", str(out), "--input", str(queries), "--output", str(tmp_path / "p.csv"), "--interval", "0.9"]) == 0
    got = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert list(got[0]) == ["smiles", "logS", "logS_sigma", "logS_low", "logS_high", "domain_score", "in_domain",
                            "unseen_elements", "error"]
    assert got[0]["in_domain"] in ("true", "false") and got[1]["error"] and not got[1]["logS_sigma"]
    capsys.readouterr()
    assert main(["predict", str(out), "--input", str(queries), "--interval", "0.999"]) == 2
    err = capsys.readouterr().err.strip()
    assert "validation rows calibrate coverages up to" in err and "\n" not in err


def test_conformal_intervals_hold_their_coverage_on_exchangeable_rows():
    rng = np.random.default_rng(0)
    n, d = 4000, 8
    reference = rng.normal(size=(200, d))
    trust = Trust({"center": np.zeros(d), "scale": np.ones(d), "reference": reference, "threshold": np.ones(1),
                   "floor": np.full(1, 1e-3), "scores": np.zeros((1, 1)), "sigma_scale": np.ones(1)}, "values", ["y"])
    pooled = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, size=(n, 1))  # farther rows ...
    noise = trust.distance(pooled) * rng.normal(size=n)                   # ... err more
    val, test = slice(0, 500), slice(500, n)
    trust.t["scores"] = (np.abs(noise[val]) / trust.spread(trust.distance(pooled[val]), None)[:, 0])[:, None]
    rows = trust.describe(np.zeros((n, 1))[test], pooled[test], None, 0.9)
    inside = [r["y_low"] <= e <= r["y_high"] for r, e in zip(rows, noise[test])]
    assert 0.88 <= np.mean(inside) <= 0.93


def test_a_model_saved_without_a_summary_loads_says_so_and_calibrate_restores_it(trained, tmp_path, capsys):
    out, table = trained
    old = tmp_path / "old"
    old.mkdir()
    for name in ("model.safetensors", "metrics.json", "card.md"):
        (old / name).write_bytes((out / name).read_bytes())
    config = yaml.safe_load((out / "config.yaml").read_text())
    del config["trust_sha256"]
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    [row] = zoo.load(old).predict([{"smiles": "CCO"}])
    err = capsys.readouterr().err.strip()
    assert "no trust summary" in err and f"zoo calibrate {old}" in err and "\n" not in err
    assert set(row) == {"logS"}
    assert main(["calibrate", str(old), "--data", str(table)]) == 0
    again, first = (zoo.load(m).predict([{"smiles": s} for s in TEXTBOOK], interval=0.8) for m in (old, out))
    assert again == first  # the same split from the recorded seed: the summary training wrote


def test_a_damaged_summary_is_refused_in_one_line(trained, tmp_path):
    out, _ = trained
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in out.iterdir():
        if path.is_file():
            (copy / path.name).write_bytes(path.read_bytes())
    data = bytearray((copy / "trust.safetensors").read_bytes())
    data[-3] ^= 0x01
    (copy / "trust.safetensors").write_bytes(bytes(data))
    with pytest.raises(zoo.ZooError, match="trust.safetensors: missing, or its sha256 does not match"):
        zoo.load(copy)


def test_the_test_set_calibration_is_recorded(trained):
    out, _ = trained
    calibration = json.loads((out / "metrics.json").read_text())["test_calibration"]
    assert {"spearman_abs_error_sigma", "miscalibration_area", "coverage", "mean_width", "in_domain"} <= set(calibration)
    assert 0 <= calibration["coverage"] <= 1 and calibration["mean_width"] > 0
