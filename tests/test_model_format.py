"""The versioned model format: config.yaml holds ``format``, the ``model`` (what running it needs, all that loading
validates) and its ``provenance`` (data, training, references, bench: recorded, never validated). A bundled model
loads whatever happens to the registry's baselines, references or bench variants; an artifact of the previous,
unversioned format loads and predicts as its format 2 rewrite does; a newer format is refused in one line."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import zoo
from encoders import ZooError
from tests.conftest import ROOT
from zoo.artifacts import BUNDLED, FORMAT, load_artifact, save, upgrade_config
from tasks import HEADS
from zoo.registry import BUILTIN_REGISTRY, MODEL_KEYS
from zoo.trust import KINDS as TRUST_KINDS

EXAMPLES = ROOT / "examples"
BUNDLED_TASKS = sorted(p.name for p in BUNDLED.iterdir() if (p / "config.yaml").is_file())
MOLECULES = [{"smiles": s} for s in ("CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1")]


def _config(folder: Path) -> dict:
    return yaml.safe_load((folder / "config.yaml").read_text())


def _write_config(folder: Path, config: dict) -> None:
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def _copy(name: str, into: Path) -> Path:
    shutil.copytree(BUNDLED / name, into)
    return into


def as_format_1(config: dict) -> dict:
    """What SciZoo wrote before formats had numbers: the whole task entry under ``task``."""
    task = {**{k: v for k, v in config["model"].items() if k != "ensemble"}, **copy.deepcopy(config["provenance"]["task"])}
    if config["model"]["ensemble"] != 1:
        task.setdefault("train", {})["ensemble"] = config["model"]["ensemble"]
    rest = {k: v for k, v in config["provenance"].items() if k != "task"}
    trust = {"trust_sha256": config["trust_sha256"]} if "trust_sha256" in config else {}  # a calibrated one
    return {"task": task, **rest, "weights_sha256": config["weights_sha256"], **trust}


def _rows(model) -> list[dict]:
    """Two good rows for a bundled model, one cell per input (the example files of the repository)."""
    texts = [json.loads(line)["text"] for line in (EXAMPLES / "abstracts.jsonl").read_text().splitlines()[:2]]
    good = {"molecule-dmpnn": ["CCO", "c1ccccc1O"], "molecule-mass": ["CCO", "c1ccccc1O"],
            "composition": ["NaCl", "SrTiO3"], "crystal-cgcnn": ["crystals/NaCl.cif", "crystals/SrTiO3.cif"],
            "crystal-chgnet": ["crystals/NaCl.cif", "crystals/SrTiO3.cif"], "text-bert": texts,
            "image-timm": ["galaxies/elliptical.png", "galaxies/edge_on.png"],
            "precursor": ["181.0709 [M+H]+", "152.0706 [M+H]+"]}
    rows = [{}, {}]
    for inp in model.spec.inputs.values():
        kind = model.spec.encoders[inp.encoder].type
        if kind == "spectrum-cnn":
            grid = model.encoders[inp.encoder].grid
            axis = np.linspace(grid[0], grid[-1], 60)
            cells = [json.dumps({"axis": axis.tolist(), "intensity": (1 + 0.2 * np.sin(axis / k)).tolist()})
                     for k in (50, 20)]
        else:
            cells = good[kind]
        for row, cell in zip(rows, cells):
            row[inp.column] = cell
    return rows


def _outputs(model, rows: list[dict]):
    if model.head.ranks:  # a retrieval model: both sides' embeddings
        return [model.embed(rows, side)[0].tolist() for side in (model.head.query, model.head.candidate)]
    return model.predict(rows)


def test_every_bundled_model_is_in_the_current_format():
    for name in BUNDLED_TASKS:
        config = _config(BUNDLED / name)
        trusted = HEADS[config["model"]["head"]["type"]].kind in TRUST_KINDS  # these carry a trust summary
        assert config["format"] == FORMAT and set(config) == {"format", "model", "provenance", "weights_sha256",
                                                               *(["trust_sha256"] if trusted else [])}, name
        assert set(config["model"]) == set(MODEL_KEYS) | {"ensemble"}, name
        assert {"data", "train", "references"} <= set(config["provenance"]["task"]), name


@pytest.mark.parametrize("name", BUNDLED_TASKS)
def test_a_bundled_model_loads_and_predicts_whatever_its_provenance_says(name, tmp_path, monkeypatch):
    """Baselines gone from the code, and the recorded data, split, training, references and bench variants all
    nonsense: none of it is read to run the model."""
    monkeypatch.setenv("ZOO_DATA_ROOT", str(EXAMPLES))
    monkeypatch.setattr("zoo.registry.BASELINES", {})
    monkeypatch.setattr("zoo.registry.SPLITS", {})
    folder = _copy(name, tmp_path / name)
    config = _config(folder)
    config["provenance"]["task"] = {"data": {"split": "no-such-split", "reader": "no-such-reader"},
                                    "train": {"epochs": -1, "ensemble": 99}, "references": {"x": "not a reference"},
                                    "bench": {"baselines": ["removed-baseline"], "variants": "gone"},
                                    "future_key": True}
    _write_config(folder, config)
    model = load_artifact(folder, device="cpu")
    outputs = _outputs(model, _rows(model))
    assert np.isfinite(np.asarray(outputs if model.head.ranks else
                                  [v for row in outputs for v in row.values() if isinstance(v, float)])).all()


def test_a_bundled_model_loads_by_name_after_its_baselines_references_and_variants_leave_the_registry(tmp_path,
                                                                                                     monkeypatch):
    """msms-to-molecule names two baselines: with them gone from the code and the registry entry, with no
    references and one bench variant, the bundled model still loads by name and predicts as before."""
    bundled = zoo.load("msms-to-molecule", device="cpu")
    rows = _rows(bundled)
    before = _outputs(bundled, rows)
    entry = yaml.safe_load(BUILTIN_REGISTRY.read_text())["tasks"]["msms-to-molecule"]
    entry["bench"] = {"variants": {"only": {}}, "baselines": []}
    entry["references"] = {}
    user = tmp_path / "mine.yaml"
    user.write_text(yaml.safe_dump({"tasks": {"msms-to-molecule": entry}}))
    from tasks.baselines import BASELINES

    monkeypatch.setattr("zoo.registry.BASELINES", {k: v for k, v in BASELINES.items()
                                                   if k not in ("spectrum-nearest-analogue", "precursor-mass-match")})
    assert _outputs(zoo.load("msms-to-molecule", registry=user, device="cpu"), rows) == before


@pytest.mark.parametrize("name", ["molecule-solubility", "msms-to-molecule", "bio-ner"])
def test_an_artifact_of_the_previous_format_loads_and_predicts_as_its_rewrite(name, tmp_path, monkeypatch):
    """bio-ner: an ensemble, whose member count the old format kept under train."""
    monkeypatch.setenv("ZOO_DATA_ROOT", str(EXAMPLES))
    old = _copy(name, tmp_path / "old")
    _write_config(old, as_format_1(_config(BUNDLED / name)))
    assert "format" not in _config(old) and "task" in _config(old)
    assert upgrade_config(_config(old)) == _config(BUNDLED / name)  # the rewrite is exactly the conversion
    new, converted = load_artifact(BUNDLED / name, device="cpu"), load_artifact(old, device="cpu")
    assert converted.spec == new.spec and converted.provenance == new.provenance
    rows = _rows(new)
    assert _outputs(converted, rows) == _outputs(new, rows)


def test_the_previous_format_is_checked_by_the_keys_of_its_own_file(tmp_path):
    old = _copy("molecule-solubility", tmp_path / "old")
    config = as_format_1(_config(old))
    config["task"]["head"]["type"] = "builtins.eval"
    _write_config(old, config)
    with pytest.raises(ZooError) as err:
        load_artifact(old)
    assert "key 'task.head.type': unknown type 'builtins.eval'" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("value, part", [
    (FORMAT + 1, f"model format {FORMAT + 1} was written by a newer SciZoo (this one reads formats 1 to {FORMAT})"),
    ("2", "format '2' is not a SciZoo model format"), (0, "format 0 is not a SciZoo model format"),
])
def test_an_unknown_format_is_refused_in_one_line(value, part, tmp_path, monkeypatch):
    folder = _copy("molecule-solubility", tmp_path / "m")
    config = _config(folder)
    config["format"] = value
    _write_config(folder, config)
    monkeypatch.setattr("zoo.artifacts.build_model", lambda spec: pytest.fail("a model was built"))
    with pytest.raises(ZooError) as err:
        load_artifact(folder)
    assert part in str(err.value) and "\n" not in str(err.value)


def test_a_format_2_config_without_a_model_is_refused(tmp_path):
    folder = _copy("molecule-solubility", tmp_path / "m")
    config = _config(folder)
    config["task"] = config.pop("model")
    _write_config(folder, config)
    with pytest.raises(ZooError, match="no 'model' mapping"):
        load_artifact(folder)


def test_a_loaded_model_saved_again_keeps_its_provenance(tmp_path):
    model = load_artifact(BUNDLED / "molecule-solubility", merge=False)
    save(model, tmp_path / "again", {})
    config, bundled = _config(tmp_path / "again"), _config(BUNDLED / "molecule-solubility")
    assert config["format"] == FORMAT and config["provenance"]["task"] == bundled["provenance"]["task"]
    assert config["provenance"]["data_sha256"] == bundled["provenance"]["data_sha256"]
    assert load_artifact(tmp_path / "again").predict(MOLECULES) == load_artifact(BUNDLED / "molecule-solubility").predict(MOLECULES)
