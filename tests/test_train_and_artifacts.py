import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest

import zoo
from encoders import ZooError
from encoders.crystal import CrystalCHGNet
from zoo.cli import main
from zoo.tables import read_rows
from tests.conftest import TINY


def test_loss_falls_on_a_small_real_subset(esol_csv, tmp_path):
    rows = read_rows(esol_csv)[:200]
    zoo.train("molecule-solubility", rows, out=tmp_path / "m", progress=False,
              overrides={**TINY, "train.epochs": 10, "train.lr": 3e-3, "train.warmup_epochs": 1})
    history = [json.loads(line) for line in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 10
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]


def test_cli_train_writes_an_artifact_that_loads_and_predicts(textbook_csv, tmp_path, capsys):
    out = tmp_path / "model"
    sets = [f"--set={k}={v}" for k, v in TINY.items()]
    assert main(["train", "molecule-solubility", "--data", str(textbook_csv), "--out", str(out),
                 "--set", "train.epochs=2", *sets]) == 0
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "model.safetensors", "metrics.json", "card.md",
                                               "metrics.jsonl"}
    assert not list(out.glob(".*tmp*"))
    [pred] = zoo.load(out).predict([{"smiles": "CCO"}])
    assert math.isfinite(pred["logS"])
    assert "molecule-solubility" in capsys.readouterr().out


def test_save_load_round_trip_gives_identical_predictions(textbook_rows, tmp_path):
    model, metrics = zoo.train("molecule-solubility", textbook_rows, out=tmp_path / "m", progress=False,
                               overrides={**TINY, "train.epochs": 3})
    rows = [{"smiles": s} for s in ("CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1")]
    before = model.predict(rows)
    after = zoo.load(tmp_path / "m").predict(rows)
    assert before == after
    saved = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert saved["test"]["rmse"] == pytest.approx(metrics["test"]["rmse"])


def test_ema_validates_keeps_and_saves_the_averaged_weights(textbook_rows, tmp_path):
    def val_history(out):
        return [json.loads(line)["val_rmse"] for line in (out / "metrics.jsonl").read_text().splitlines()]

    settings = {**TINY, "train.epochs": 4, "train.lr": 3e-3, "train.warmup_epochs": 0, "train.patience": 10}
    zoo.train("molecule-solubility", textbook_rows, out=tmp_path / "raw", progress=False, overrides=settings)
    model, _ = zoo.train("molecule-solubility", textbook_rows, out=tmp_path / "ema", progress=False,
                         overrides={**settings, "train.ema": 0.99999})
    # a decay this close to 1 holds the weights of the first step: validation stands still while training moves
    raw, ema = val_history(tmp_path / "raw"), val_history(tmp_path / "ema")
    assert max(ema) - min(ema) < 0.01 * (max(raw) - min(raw))
    rows = [{"smiles": s} for s in ("CCO", "c1ccccc1O")]
    assert zoo.load(tmp_path / "ema").predict(rows) == model.predict(rows)


def test_an_ensemble_trains_its_members_on_one_split_and_predicts_their_mean(textbook_rows, tmp_path):
    settings = {**TINY, "train.epochs": 3, "train.seed": 4}
    single, _ = zoo.train("molecule-solubility", textbook_rows, out=tmp_path / "one", progress=False,
                          overrides=settings)
    model, metrics = zoo.train("molecule-solubility", textbook_rows, out=tmp_path / "two", progress=False,
                               overrides={**settings, "train.ensemble": 2})
    rows = [{"smiles": s} for s in ("CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1")]
    alone = [[p["logS"] for p in m.predict(rows)] for m in model.members]
    assert [p["logS"] for p in single.predict(rows)] == alone[0]  # member 0 is the plain run of the same seed
    assert alone[0] != alone[1]  # member 1 has a seed of its own
    together = [p["logS"] for p in model.predict(rows)]
    assert together == pytest.approx(np.mean(alone, axis=0), rel=1e-5)
    assert zoo.load(tmp_path / "two").predict(rows) == model.predict(rows)
    assert len(metrics["member_val"]) == len(metrics["best_epoch"]) == 2
    assert metrics["n_val"] == json.loads((tmp_path / "one" / "metrics.json").read_text())["n_val"]
    members = [json.loads(line)["member"] for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert members == [0] * 3 + [1] * 3
    assert "an ensemble of 2 models (seeds 4-5)" in (tmp_path / "two" / "card.md").read_text()


def test_resuming_a_finished_ensemble_trains_no_member_again(textbook_rows, tmp_path):
    spec = zoo.info("molecule-solubility", overrides={**TINY, "train.epochs": 2, "train.ensemble": 2})
    _, first = zoo.Trainer(spec, tmp_path, progress=False).fit(textbook_rows)
    log = (tmp_path / "metrics.jsonl").read_text()
    _, again = zoo.Trainer(spec, tmp_path, progress=False).fit(textbook_rows, resume=True)
    assert (tmp_path / "metrics.jsonl").read_text() == log
    assert again["val"] == first["val"] and again["test"] == first["test"]


def test_a_contrastive_task_refuses_an_ensemble():
    with pytest.raises(ZooError, match="train.ensemble"):
        zoo.info("molecule-text-retrieval", overrides={"train.ensemble": 2})


@pytest.mark.parametrize("fusion", [{"type": "mean", "dim": 32},
                                    {"type": "cross-attention", "dim": 32, "heads": 2, "latents": 4}])
def test_predictions_are_finite_and_depend_on_the_molecule(textbook_rows, fusion):
    model, _ = zoo.train("molecule-solubility", textbook_rows, progress=False,
                         overrides={**TINY, "fusion": fusion, "train.epochs": 5})
    preds = [p["logS"] for p in model.predict([{"smiles": s} for s in ("CCCCCCCC", "OCC(O)CO")])]
    assert np.isfinite(preds).all() and preds[0] != preds[1]


def test_training_skips_bad_rows_and_says_which(textbook_rows, capsys):
    rows = textbook_rows + [{"smiles": "not-a-smiles", "measured log solubility in mols per litre": 1.0},
                            {"smiles": "CCO", "measured log solubility in mols per litre": None}]
    _, metrics = zoo.train("molecule-solubility", rows, progress=False, overrides={**TINY, "train.epochs": 1})
    assert metrics["skipped_rows"] == 2
    err = capsys.readouterr().err
    assert "skipped 2 of 42 rows" in err and "row 40: molecule: column 'smiles': cannot parse" in err


def test_training_with_no_usable_row_is_a_clear_error():
    with pytest.raises(ZooError, match="no usable training rows"):
        zoo.train("molecule-solubility", [{"smiles": "xx", "measured log solubility in mols per litre": 1.0}],
                  progress=False)


def test_tampered_or_incomplete_artifacts_are_refused(textbook_rows, tmp_path):
    zoo.train("molecule-solubility", textbook_rows, out=tmp_path / "m", progress=False,
              overrides={**TINY, "train.epochs": 1})
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ZooError, match="sha256 does not match"):
        zoo.load(tmp_path / "m")
    (tmp_path / "m" / "config.yaml").unlink()
    with pytest.raises(ZooError, match="not a SciZoo model folder"):
        zoo.load(tmp_path / "m")


def test_training_data_without_the_needed_columns_is_a_clear_error(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("smiles,logp\nCCO,-0.3\n")
    assert main(["train", "molecule-solubility", "--data", str(data), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("zoo: error: task 'molecule-solubility': the training data has no column "
                   "'measured log solubility in mols per litre' (columns: smiles, logp)")


def test_featurization_is_cached_per_data_hash(textbook_rows, tmp_path, monkeypatch):
    from zoo.model import ZooModel
    from zoo.train import prepare

    monkeypatch.setenv("ZOO_HOME", str(tmp_path))
    model = ZooModel(zoo.info("molecule-solubility", overrides=TINY))
    first = prepare(model, textbook_rows, progress=False, data_sha256="abc")
    assert len(list((tmp_path / "features").glob("molecule-solubility-*.npz"))) == 1

    def fail(rows):
        raise AssertionError("featurized again despite the cache")

    monkeypatch.setattr(model, "featurize_rows", fail)
    second = prepare(model, textbook_rows, progress=False, data_sha256="abc")
    assert len(second.features) == len(first.features) and second.keys == first.keys
    for a, b in zip(first.features, second.features):
        assert np.array_equal(a["smiles"].atoms, b["smiles"].atoms)
        assert np.array_equal(a["smiles"].pairs, b["smiles"].pairs)
    with pytest.raises(AssertionError, match="featurized again"):
        prepare(model, textbook_rows, progress=False, data_sha256="other data")


def test_an_edited_encoder_does_not_load_features_cached_by_the_old_code(tmp_path, monkeypatch):
    from zoo import cache

    spec = zoo.info("materials-property")
    before = cache.cache_key(spec, "abc")
    edited = tmp_path / "crystal.py"
    edited.write_text(Path(inspect.getfile(CrystalCHGNet)).read_text() + "\n# a changed featurization\n")
    real = inspect.getfile
    monkeypatch.setattr(inspect, "getfile", lambda cls: edited if cls is CrystalCHGNet else real(cls))
    assert cache.cache_key(spec, "abc") != before


def test_features_cached_by_one_run_train_the_same_model_in_workers(textbook_rows, tmp_path, monkeypatch):
    from zoo.model import ZooModel

    spec = zoo.info("molecule-solubility", overrides={**TINY, "train.epochs": 2})
    _, first = zoo.Trainer(spec, progress=False, device="cpu").fit(textbook_rows, data_sha256="abc")

    def fail(self, rows):
        raise AssertionError("featurized again despite the cache")

    monkeypatch.setattr(ZooModel, "featurize_rows", fail)  # in the workers too: they are forked after this
    _, again = zoo.Trainer(spec, progress=False, device="cpu", workers=2).fit(textbook_rows, data_sha256="abc")
    assert again["val"] == first["val"] and again["test"] == first["test"]
