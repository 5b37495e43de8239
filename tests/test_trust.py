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


@pytest.mark.parametrize("loss", ["mse", "l1"])
def test_a_mean_variance_head_learns_which_rows_are_noisy(loss):
    # rows x in [-1, 1] with y = x + noise whose std is 0.02 for x < 0 and 0.5 for x > 0: the Gaussian (mse) or
    # Laplace (l1) likelihood teaches the head both the centre and the spread; decode gives the centre alone
    from fusion.common import Fused
    from tasks.heads import RegressionHead

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 400).unsqueeze(1)
    y = x + torch.where(x < 0, 0.02, 0.5) * torch.randn_like(x)
    head = RegressionHead(1, targets={"y": "y"}, hidden=32, loss=loss, uncertainty="mve")
    head.fit(y.numpy())
    step = torch.optim.Adam(head.parameters(), lr=1e-2)
    fused = Fused(x, {}, {})
    for _ in range(400):
        step.zero_grad()
        head.loss(head(fused), y, torch.ones_like(y, dtype=torch.bool)).backward()
        step.step()
    with torch.no_grad():
        raw = head(fused)
        std = head.variance(raw).sqrt().squeeze(1)
        assert head.decode(raw).shape == (400, 1)
        assert float(torch.mean((head.decode(raw) - x) ** 2)) < 0.02
    quiet, noisy = std[x[:, 0] < -0.2].median(), std[x[:, 0] > 0.2].median()
    assert 0.2 < noisy < 0.8 and quiet < 0.1, (quiet, noisy)


def test_the_model_spread_combines_members_and_predicted_variances():
    import torch

    from tasks.heads import RegressionHead
    from zoo.trust import model_spread

    plain, mve = (RegressionHead(4, targets={"y": "y"}, uncertainty=u) for u in ("none", "mve"))
    for head in (plain, mve):
        head.std.fill_(2.0)
    softplus_inverse = lambda v: float(np.log(np.expm1(v)))  # raw input that gives variance v (standardised)
    parts = [torch.tensor([[m, softplus_inverse(v)]]) for m, v in ((0.0, 0.25), (1.0, 0.75))]
    assert model_spread(plain, torch.zeros(1, 1), None) is None
    assert model_spread(plain, torch.zeros(1, 1), [p[:, :1] for p in parts]) == pytest.approx(np.array([[1.0]]))
    # one model: its own std, in the target's units (std 2 -> variance x 4)
    assert model_spread(mve, parts[0], None) == pytest.approx(np.array([[1.0]]), rel=1e-5)
    # two: the mixture's std, sqrt(var of the means (1 = (2 / 2)^2) + mean variance (0.5 * 4 = 2))
    assert model_spread(mve, parts[0], parts) == pytest.approx(np.array([[3 ** 0.5]]), rel=1e-5)


def test_a_trained_mean_variance_model_scales_its_own_sigma(tmp_path):
    table = tmp_path / "textbook.csv"
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows([["smiles", "measured log solubility in mols per litre"],
                                 *[[s, len(s) / 10] for s in TEXTBOOK]])
    out = tmp_path / "model"
    assert main(["train", "molecule-solubility", "--data", str(table), "--out", str(out), *SETS,
                 "--set=head.uncertainty=mve"]) == 0
    import torch

    from zoo.trust import model_spread

    model = zoo.load(out)
    rows = [{"smiles": s} for s in TEXTBOOK[:8]]
    got = model.predict(rows, interval=0.9)
    batch = model.collate([f for f, _ in model.featurize_rows(rows)])
    with torch.no_grad():
        raw, _, parts = model.run(batch)
    own = model_spread(model.head, raw, parts)[:, 0]  # sigma is the head's std, scaled on the validation rows
    expected = np.maximum(own, model.trust.t["floor"][0]) * model.trust.t["sigma_scale"][0]
    assert [r["logS_sigma"] for r in got] == pytest.approx(expected.tolist(), rel=1e-5)
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["head"]["uncertainty"] == "mve"
    assert model.trust.t["own_spread"].tolist() == [1.0]  # asked for by the entry, so never traded for the distance


def test_the_summary_keeps_the_model_spread_only_where_it_fits_the_errors_better_than_the_distance():
    from zoo.trust import own_spread_fits_better as fits

    rng = np.random.default_rng(0)
    n = 500
    sigma = rng.uniform(0.2, 2, n)                     # each row's true noise ...
    errors = np.abs(sigma * rng.normal(size=n))        # ... sets its error
    learnt = sigma[:, None] * rng.uniform(0.9, 1.1, (n, 1)) * 3   # a head that learnt it (any scale)
    two_members = sigma[:, None] * np.abs(rng.normal(size=(n, 1)))  # the std of two draws: right on average only
    distance = sigma * rng.uniform(0.5, 2, n)          # a distance that tracks the noise loosely
    assert fits(errors[:, None], learnt, distance).tolist() == [1.0]
    assert fits(errors[:, None], two_members, distance).tolist() == [0.0]
    assert fits(errors[:, None], None, distance).tolist() == [0.0]
    both = np.stack([errors, np.where(np.arange(n) % 3, errors, np.nan)], 1)  # a target missing on some rows
    assert fits(both, np.concatenate([learnt, two_members], 1), distance).tolist() == [1.0, 0.0]
    trust = Trust({"center": np.zeros(2), "scale": np.ones(2), "reference": np.zeros((1, 2)), "threshold": np.ones(1),
                   "floor": np.zeros(1), "own_spread": np.array([1.0, 0.0])}, "values", ["a", "b"])
    own = np.full((2, 2), 7.0)
    assert trust.spread(np.array([1.0, 2.0]), own).tolist() == [[7.0, 1.0], [7.0, 2.0]]
    del trust.t["own_spread"]  # a summary saved before the choice: the model's own spread wherever it gives one
    assert trust.spread(np.array([1.0, 2.0]), own).tolist() == [[7.0, 7.0], [7.0, 7.0]]
