"""The component contracts in code: every built-in encoder, fusion and head satisfies its protocol; a class that
lacks a member is refused when registered (at import), in one line naming the class and the member; the engines
read a head's ``kind``, ``metrics`` and ``ranks`` and a row's ``Features.size`` instead of guessing; and a separate
installed package adds an encoder and a fusion through entry points, which a user registry file then trains and
predicts with from the command line."""
from __future__ import annotations

import csv
import importlib
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from encoders import ENCODERS, ContractError, Tokens, ZooError, register_encoder
from encoders.base import Encoder, check_contract, check_encoder
from fusion import FUSIONS, register_fusion
from fusion.common import Fused, check_fusion
from tasks import HEADS, KINDS, METRICS, register_head
from tasks.heads import RegressionHead, check_head
from zoo.model import feature_size

PLUGIN = Path(__file__).resolve().parent / "plugin"


def _one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(err.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message


# -- built-ins ---------------------------------------------------------------------------------------------------
def test_every_built_in_component_satisfies_its_contract():
    for registry, check in ((ENCODERS, check_encoder), (FUSIONS, check_fusion), (HEADS, check_head)):
        assert len(registry) >= 2
        for name, cls in registry.items():
            check(cls, f"{registry.kind} type {name!r}")


def test_heads_say_what_they_decode_what_scores_them_and_whether_they_rank():
    assert {name: cls.kind for name, cls in HEADS.items()} == {
        "regression": "values", "multilabel": "probabilities", "token-classification": "tags",
        "contrastive": "embeddings", "classification": "classes"}
    assert [name for name, cls in HEADS.items() if cls.ranks] == ["contrastive"]
    assert HEADS["regression"].metrics == ("rmse", "mae", "r2")
    assert all(set(cls.metrics) <= set(METRICS) and cls.kind in KINDS for cls in HEADS.values())
    assert HEADS["token-classification"].describe_uses_features and not HEADS["regression"].describe_uses_features


# -- a class lacking a member is refused at registration --------------------------------------------------------
@dataclass
class _Feat:
    n: np.ndarray

    @property
    def size(self) -> int:
        return len(self.n)


class _GoodEncoder(nn.Module):
    out_dim: int

    def __init__(self, *, dim: int = 4):
        super().__init__()
        self.out_dim = dim

    @staticmethod
    def featurize(raw) -> _Feat:
        return _Feat(np.zeros(1))

    @staticmethod
    def collate(items: list[_Feat | None]) -> dict:
        return {}

    def forward(self, batch) -> Tokens:
        return Tokens(torch.zeros(1, 1, 4), torch.ones(1, 1, dtype=torch.bool))


def test_a_good_encoder_passes_and_registration_keeps_it():
    check_encoder(_GoodEncoder, "encoder type 'good'")


@pytest.mark.parametrize("member", ["featurize", "collate", "forward"])
def test_an_encoder_without_a_method_is_refused_naming_it(member):
    # a subclass would inherit the member: build the class afresh without it
    namespace = {k: v for k, v in vars(_GoodEncoder).items() if k != member and not k.startswith("__")}
    bad = type("BadEncoder", (nn.Module,), {**namespace, "__annotations__": {"out_dim": "int"}})
    with pytest.raises(ContractError) as err:
        register_encoder("contract-test-bad")(bad)
    _one_line(err, "encoder type 'contract-test-bad'", "BadEncoder", repr(member), "Encoder contract")
    assert "contract-test-bad" not in ENCODERS


def test_an_encoder_that_does_not_declare_out_dim_is_refused():
    namespace = {k: v for k, v in vars(_GoodEncoder).items() if not k.startswith("__")}
    bad = type("NoWidth", (nn.Module,), namespace)
    with pytest.raises(ContractError) as err:
        register_encoder("contract-test-width")(bad)
    _one_line(err, "NoWidth", "'out_dim'", "declare it on the class")


@dataclass
class _NoSize:
    n: np.ndarray


@dataclass
class _ListField:
    n: list

    @property
    def size(self) -> int:
        return 1


@pytest.mark.parametrize("features, part", [
    (_NoSize, "'size'"), (_ListField, "numpy arrays and ints"), (dict, "not a dataclass"), (None, "no return annotation"),
])
def test_featurize_must_return_a_features_dataclass(features, part):
    def featurize(raw):
        return None

    if features is not None:
        featurize.__annotations__["return"] = features
    bad = type("OddFeatures", (_GoodEncoder,), {"featurize": staticmethod(featurize)})
    with pytest.raises(ContractError) as err:
        register_encoder("contract-test-features")(bad)
    _one_line(err, "OddFeatures", part)


def test_a_registration_that_fails_does_so_when_its_module_is_imported(tmp_path, monkeypatch):
    (tmp_path / "half_an_encoder.py").write_text(
        "from torch import nn\n"
        "from encoders import register_encoder\n"
        "@register_encoder('contract-test-import')\n"
        "class HalfAnEncoder(nn.Module):\n"
        "    out_dim: int\n"
        "    def forward(self, batch):\n"
        "        return batch\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ContractError) as err:
        importlib.import_module("half_an_encoder")
    _one_line(err, "half_an_encoder.HalfAnEncoder", "'featurize'")
    sys.modules.pop("half_an_encoder", None)


def test_inheriting_the_protocol_satisfies_nothing():
    class Pretends(Encoder, nn.Module):
        out_dim = 4

    with pytest.raises(ContractError, match="'featurize'"):
        check_contract(Pretends, Encoder, "encoder type 'pretends'")


def test_the_same_name_cannot_be_registered_twice():
    with pytest.raises(ContractError, match="registered twice"):
        register_encoder("molecule-dmpnn")(_GoodEncoder)


def test_a_head_without_its_members_is_refused():
    namespace = {k: v for k, v in vars(RegressionHead).items() if k not in ("decode",) and not k.startswith("__")}
    no_decode = type("NoDecode", (nn.Module,), {**namespace, "ranks": False, "describe_uses_features": False,
                                                "outputs": [], "numeric": [], "read_targets": lambda self, rows: None,
                                                "describe": lambda self, v, f: {}, "__annotations__": {"targets": "list"}})
    with pytest.raises(ContractError) as err:
        register_head("contract-test-head")(no_decode)
    _one_line(err, "NoDecode", "'decode'", "Head contract")

    ranks_without_sides = type("Ranks", (RegressionHead,), {"ranks": True})
    with pytest.raises(ContractError) as err:
        register_head("contract-test-ranks")(ranks_without_sides)
    _one_line(err, "'query'", "ranking head")

    for attrs, part in (({"kind": "vibes"}, "kind 'vibes'"), ({"metrics": ("nope",)}, "metrics ('nope',)"),
                        ({"kind": "classes"}, "'classes'")):
        with pytest.raises(ContractError) as err:
            register_head("contract-test-attrs")(type("Odd", (RegressionHead,), attrs))
        _one_line(err, part)
    assert not {"contract-test-head", "contract-test-ranks", "contract-test-attrs"} & set(HEADS)


def test_a_fusion_needs_forward_and_a_dim():
    class NoForward(nn.Module):
        def __init__(self, names, *, dim: int = 8):
            super().__init__()

    class NoDim(nn.Module):
        def __init__(self, names):
            super().__init__()

        def forward(self, inputs) -> Fused:
            raise NotImplementedError

    with pytest.raises(ContractError) as err:
        register_fusion("contract-test-fusion")(NoForward)
    _one_line(err, "NoForward", "'forward'", "Fusion contract")
    with pytest.raises(ContractError) as err:
        register_fusion("contract-test-fusion")(NoDim)
    _one_line(err, "NoDim", "'dim'")


# -- the engines read the contract -----------------------------------------------------------------------------
def test_a_rows_batching_size_is_its_features_size_not_their_first_field():
    @dataclass
    class Padded:
        header: np.ndarray  # first field: not what a row costs
        tokens: np.ndarray

        @property
        def size(self) -> int:
            return len(self.tokens)

    row = {"a": Padded(np.zeros(100), np.zeros(3)), "b": None, "c": Padded(np.zeros(1), np.zeros(5))}
    assert feature_size(row) == 8


def test_a_task_whose_metric_does_not_score_its_head_is_refused(tmp_path):
    from zoo.registry import load_registry

    user = tmp_path / "mine.yaml"
    user.write_text(yaml.safe_dump({"tasks": {"odd": {
        "description": "a regression scored by retrieval", "inputs": {"smiles": {"column": "smiles", "encoder": "molecule-dmpnn"}},
        "fusion": {"type": "mean"}, "head": {"type": "regression", "targets": {"y": "y"}},
        "data": {"dataset": "toy", "file": "t.csv"}, "metric": "mrr"}}}))
    with pytest.raises(ZooError) as err:
        load_registry(user)
    _one_line(err, "task 'odd'", "key 'metric'", "'mrr' does not score a regression head", "rmse, mae, r2")


def test_embeddings_are_refused_for_a_head_that_does_not_rank():
    import zoo

    with pytest.raises(ZooError, match="has no embeddings to rank"):
        zoo.load("molecule-solubility").embed([{"smiles": "CCO"}], "smiles")


# -- plugins ---------------------------------------------------------------------------------------------------
@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """tests/plugin installed as a separate distribution would be: its package and a .dist-info whose
    entry_points.txt comes from its pyproject.toml, on sys.path. The registries are restored after."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "scizoo_toy").mkdir()
    (site / "scizoo_toy" / "__init__.py").write_text((PLUGIN / "scizoo_toy" / "__init__.py").read_text())
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    info = site / "scizoo_toy-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in points.items()) + "\n"
        for group, points in project["entry-points"].items()))
    before = {id(r): dict(r) for r in (ENCODERS, FUSIONS, HEADS)}
    monkeypatch.syspath_prepend(str(site))
    yield site
    for registry in (ENCODERS, FUSIONS, HEADS):
        for name in set(registry) - set(before[id(registry)]):
            dict.__delitem__(registry, name)
    sys.modules.pop("scizoo_toy", None)


def _write_plugin_registry(folder: Path) -> Path:
    path = folder / "plugin.yaml"
    path.write_text(yaml.safe_dump({
        "encoders": {"chars": {"type": "toy-chars", "dim": 16}},
        "tasks": {"word-length": {
            "description": "A word's length from its characters (a toy task of a plugin's encoder and fusion)",
            "inputs": {"word": {"column": "word", "encoder": "chars"}},
            "fusion": {"type": "toy-max", "dim": 16},
            "head": {"type": "regression", "targets": {"length": "length"}, "hidden": 16},
            "data": {"dataset": "toy-words", "file": "words.csv", "fractions": [0.6, 0.2, 0.2]},
            "train": {"epochs": 3, "batch_size": 8, "lr": 0.01, "warmup_epochs": 0},
            "metric": "rmse"}}}, sort_keys=False))
    return path


def _write_words(path: Path, n: int, seed: int, with_target: bool = True) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["word", "length"] if with_target else ["word"])
        for _ in range(n):
            word = "".join(rng.choice(list("abcdefghij"), size=int(rng.integers(1, 12))))
            writer.writerow([word, len(word)] if with_target else [word])


def test_a_plugins_types_are_found_only_by_name_and_loaded_only_when_named(plugin):
    assert "toy-chars" not in dict(ENCODERS) and "scizoo_toy" not in sys.modules
    assert "toy-chars" in ENCODERS.known() and "toy-max" in FUSIONS.known()
    assert "scizoo_toy" not in sys.modules  # listing names imports nothing
    assert ENCODERS["toy-chars"].__module__ == "scizoo_toy" and "toy-max" in FUSIONS
    assert "no-such-type" not in ENCODERS and ENCODERS.get("no-such-type") is None


def test_an_encoder_and_a_fusion_from_a_plugin_train_and_predict_from_the_cli(plugin, tmp_path, capsys):
    from zoo.cli import main

    registry = _write_plugin_registry(tmp_path)
    _write_words(tmp_path / "words.csv", 80, seed=0)
    _write_words(tmp_path / "new.csv", 6, seed=1, with_target=False)
    out = tmp_path / "model"
    assert main(["--registry", str(registry), "train", "word-length", "--data", str(tmp_path / "words.csv"),
                 "--out", str(out), "--device", "cpu"]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["format"] == 2 and config["model"]["encoders"]["chars"]["type"] == "toy-chars"
    capsys.readouterr()
    assert main(["predict", str(out), "--input", str(tmp_path / "new.csv"), "--output", str(tmp_path / "p.csv"),
                 "--device", "cpu"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 6 and all(np.isfinite(float(r["length"])) for r in rows)
    entry = yaml.safe_load(registry.read_text())
    entry["tasks"]["word-length"]["weights"] = str(out)  # by name, from the user's registry
    registry.write_text(yaml.safe_dump(entry))
    assert main(["--registry", str(registry), "predict", "word-length", "--input", str(tmp_path / "new.csv"),
                 "--output", str(tmp_path / "by-name.csv"), "--device", "cpu"]) == 0
    assert (tmp_path / "by-name.csv").read_text() == (tmp_path / "p.csv").read_text()


def test_a_broken_plugin_fails_in_one_line_naming_it(plugin):
    info = next(plugin.glob("*.dist-info"))
    (info / "entry_points.txt").write_text(
        "[scizoo.heads]\nhalf-head = scizoo_toy:CharEncoder\nmissing = scizoo_toy:NoSuchClass\n")
    with pytest.raises(ContractError) as err:
        HEADS["half-head"]
    _one_line(err, "head type 'half-head'", "scizoo_toy.CharEncoder", "Head contract")
    with pytest.raises(ZooError) as err:
        "missing" in HEADS  # noqa: B015
    _one_line(err, "head type 'missing'", "plugin 'scizoo_toy:NoSuchClass' of scizoo-toy", "cannot be loaded")
