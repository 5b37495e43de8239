"""zoo bench: data files found and hash-checked (local folder, download cache, mismatch), the README table
generated from the results, and every registry task's protocol run end to end on a --quick subset."""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile

import pytest
import yaml
from conftest import ROOT, SHARED_DATA

from encoders import ZooError
from tasks.splits import matbench_split
from zoo.bench import replot
from zoo.cli import main
from zoo.data import data_file
from zoo.registry import load_registry

CSV = b"smiles,logS\nCCO,1.1\nc1ccccc1,-1.6\n"


def _registry(tmp_path, files: dict) -> object:
    """A user registry declaring one data set with ``files`` and a task reading ``table.csv`` from it."""
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({
        "datasets": {"toy": {"source": "written by this test", "files": files}},
        "tasks": {"toy-task": {
            "description": "toy", "inputs": {"smiles": {"column": "smiles", "encoder": "molecule-dmpnn"}},
            "fusion": {"type": "mean", "dim": 16}, "head": {"type": "regression", "targets": {"logS": "logS"}},
            "data": {"dataset": "toy", "file": "table.csv"}, "metric": "rmse"}},
    }))
    return load_registry(path).task("toy-task")


def test_a_data_file_comes_from_zoo_data_when_its_hash_matches(tmp_path, monkeypatch):
    (tmp_path / "data" / "toy").mkdir(parents=True)
    (tmp_path / "data" / "toy" / "table.csv").write_bytes(CSV)
    monkeypatch.setenv("ZOO_DATA", str(tmp_path / "data"))
    spec = _registry(tmp_path, {"table.csv": {"sha256": hashlib.sha256(CSV).hexdigest()}})
    assert data_file(spec, "table.csv") == tmp_path / "data" / "toy" / "table.csv"

    (tmp_path / "data" / "toy" / "table.csv").write_bytes(CSV + b"CCCC,-2.0\n")  # edited since it was declared
    with pytest.raises(ZooError, match="sha256 .* is not the registry's .* toy/table.csv"):
        data_file(spec, "table.csv")


def test_a_missing_file_under_zoo_data_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_DATA", str(tmp_path))
    spec = _registry(tmp_path, {})
    with pytest.raises(ZooError, match="no toy/table.csv under ZOO_DATA"):
        data_file(spec, "table.csv")


def test_without_zoo_data_a_file_is_downloaded_once_from_an_archive_and_checked(tmp_path, monkeypatch):
    """A file:// address stands in for the public one: the same urllib path, no network."""
    archive = tmp_path / "published.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("table.csv")
        info.size = len(CSV)
        tar.addfile(info, io.BytesIO(CSV))
    monkeypatch.delenv("ZOO_DATA", raising=False)
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    declared = {"url": archive.as_uri(), "member": "table.csv", "sha256": hashlib.sha256(CSV).hexdigest()}
    path = data_file(_registry(tmp_path, {"table.csv": declared}), "table.csv")
    assert path == tmp_path / "home" / "data" / "toy" / "table.csv" and path.read_bytes() == CSV
    archive.unlink()  # a second call reads the cache
    assert data_file(_registry(tmp_path, {"table.csv": declared}), "table.csv").read_bytes() == CSV


def test_a_download_with_the_wrong_hash_leaves_nothing_behind(tmp_path, monkeypatch):
    source = tmp_path / "published.csv"
    source.write_bytes(CSV)
    monkeypatch.delenv("ZOO_DATA", raising=False)
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    spec = _registry(tmp_path, {"table.csv": {"url": source.as_uri(), "sha256": "0" * 64}})
    with pytest.raises(ZooError, match="not the registry's 0000"):
        data_file(spec, "table.csv")
    assert not any((tmp_path / "home" / "data" / "toy").iterdir())


def test_a_file_without_an_address_asks_for_zoo_data(tmp_path, monkeypatch):
    monkeypatch.delenv("ZOO_DATA", raising=False)
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    with pytest.raises(ZooError, match="no download address .* set ZOO_DATA"):
        data_file(_registry(tmp_path, {"table.csv": {"sha256": "0" * 64}}), "table.csv")


def test_every_registry_data_file_is_declared_with_a_hash():
    registry = load_registry()
    for name in registry.names():
        data = registry.task(name).data
        for file in filter(None, (data.file, data.test_file)):
            assert data.source and data.files.get(file) and data.files[file].sha256, f"{name}: {file}"


def test_the_readme_table_is_the_one_generated_from_the_results():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from readme_table import END, START, table

    readme = (ROOT / "README.md").read_text()
    assert readme[readme.index(START) + len(START) : readme.index(END)].strip() == table().strip()


def test_the_readme_table_gives_each_training_recipe_its_own_row():
    # a merged record with runs at several budgets: no mean mixes them, and each row says how its recipe
    # differs from the registry's; runs that record their recipe are grouped by it, older ones by overrides
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from readme_table import _rows
    from zoo.bench import recipe

    registry = load_registry()
    now = recipe(registry.task("molecule-solubility"))
    run = lambda seed, rmse, over, **more: {"variant": "ours", "seed": seed, "test": {"rmse": rmse}, "overrides": over,
                                           **more}
    record = {"task": "molecule-solubility", "metric": "rmse", "split": "random", "runs": [
        run(0, 0.52, {"train.ema": 0.999}, recipe=now),  # an override the registry has since adopted
        run(1, 0.60, {}, recipe={**now, "train": {**now["train"], "epochs": 30}}),
        run(2, 0.58, {"train.epochs": 30}), run(3, 0.62, {"train.epochs": 30}),
        run(4, 0.56, {}, recipe=now)]}
    rows = _rows(record, "ours", "ours", "", registry)
    assert len(rows) == 3
    assert "| ours (as the registry) |" in rows[0] and "**0.540 ± 0.020** | 0.520, 0.560 |" in rows[0]
    assert "| ours (train.epochs=30) |" in rows[1] and "| 0.600 |" in rows[1]  # by recipe
    assert "| ours (train.epochs=30, recipe not recorded) |" in rows[2] and "**0.600 ± 0.020** | 0.580, 0.620 |" in rows[2]
    same = {**record, "runs": [run(1, 0.60, {}), run(2, 0.58, {})]}  # one recipe: the variant's name alone
    assert _rows(same, "ours", "ours", "", registry)[0].startswith(
        "| `molecule-solubility` | ours | RMSE (random) | **0.590 ± 0.010**")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs the shared data sets (../shared/data or ZOO_DATA)")
def test_zoo_bench_all_quick_runs_every_task_protocol(tmp_path, monkeypatch):
    """The CI-sized run of every benchmark: same code path as a full run, a few hundred rows, two epochs."""
    monkeypatch.setenv("ZOO_DATA", str(SHARED_DATA))
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    assert main(["bench", "all", "--quick", "--results", str(tmp_path)]) == 0
    for name in load_registry().names():
        record = json.loads((tmp_path / f"{name}.json").read_text())
        assert record["quick"] and record["runs"] and record["data_sha256"]
        assert all(run["test"][record["metric"]] == run["test"][record["metric"]] for run in record["runs"])  # no NaN
        assert (tmp_path / f"{name}-curves.png").is_file()


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs the shared data sets (../shared/data or ZOO_DATA)")
def test_merge_completes_a_benchmark_one_seed_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_DATA", str(SHARED_DATA))
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    bench = ["bench", "molecule-solubility", "--quick", "--results", str(tmp_path)]
    assert main(bench + ["--seeds", "0"]) == 0
    assert main(bench + ["--seeds", "1", "--merge"]) == 0
    record = json.loads((tmp_path / "molecule-solubility.json").read_text())
    assert [r["seed"] for r in record["runs"]] == [0, 1] and record["seeds"] == [0, 1]
    assert record["mean"] == pytest.approx(sum(r["test"]["rmse"] for r in record["runs"]) / 2)
    assert main(bench + ["--seeds", "1", "--merge"]) == 0  # a rerun replaces its own run, never adds a copy
    assert len(json.loads((tmp_path / "molecule-solubility.json").read_text())["runs"]) == 2


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs the shared data sets (../shared/data or ZOO_DATA)")
def test_work_keeps_each_run_and_a_second_call_does_not_train_it_again(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_DATA", str(SHARED_DATA))
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    bench = ["bench", "molecule-solubility", "--quick", "--seeds", "0", "--results", str(tmp_path),
             "--work", str(tmp_path / "work")]
    assert main(bench) == 0
    run = tmp_path / "work" / "molecule-solubility" / "ours-0"
    assert {"config.yaml", "model.safetensors", "checkpoint.pt"} <= {p.name for p in run.iterdir()}
    first, log = json.loads((tmp_path / "molecule-solubility.json").read_text()), (run / "metrics.jsonl").read_text()
    assert main(bench) == 0
    again = json.loads((tmp_path / "molecule-solubility.json").read_text())
    assert (run / "metrics.jsonl").read_text() == log  # no epoch was trained again
    assert again["runs"][0]["test"] == first["runs"][0]["test"]


# ---- --quick: a smoke test, one variant, never beside the references -------------------------------------

def _bench_registry(tmp_path, monkeypatch, textbook_csv) -> str:
    """A user registry with a two-variant toy task (40 textbook molecules) and one published reference."""
    data = tmp_path / "data" / "toy"
    data.mkdir(parents=True)
    (data / "table.csv").write_bytes(textbook_csv.read_bytes())
    monkeypatch.setenv("ZOO_DATA", str(tmp_path / "data"))
    path, sha = tmp_path / "bench.yaml", hashlib.sha256(textbook_csv.read_bytes()).hexdigest()
    path.write_text(yaml.safe_dump({
        "datasets": {"toy": {"source": "written by this test", "files": {"table.csv": {"sha256": sha}}}},
        "tasks": {"toy-bench": {
            "description": "toy", "inputs": {"smiles": {"column": "smiles", "encoder": "molecule-dmpnn"}},
            "fusion": {"type": "mean", "dim": 32},
            "head": {"type": "regression", "targets": {"logP": "measured log solubility in mols per litre"}},
            "data": {"dataset": "toy", "file": "table.csv", "seeds": [0, 1]},
            "train": {"epochs": 3, "batch_size": 16}, "metric": "rmse",
            "references": {"Somebody 2020": {"value": 1.0, "source": "a paper, Table 1"}},
            "bench": {"variants": {"ours": {}, "narrow": {"fusion.dim": 16}}}}},
    }, sort_keys=False))  # the first variant is the task's own
    return str(path)


TINY_SET = ["--set", "encoders.molecule-dmpnn.hidden=32", "--set", "train.batch_size=16"]


def test_quick_runs_one_variant_and_says_it_is_not_comparable(tmp_path, monkeypatch, capsys, textbook_csv):
    registry = _bench_registry(tmp_path, monkeypatch, textbook_csv)
    assert main(["--registry", registry, "bench", "toy-bench", "--quick", "--results", str(tmp_path / "q"),
                 *TINY_SET]) == 0
    out = capsys.readouterr().out
    assert "quick: not comparable" in out
    assert "Somebody 2020" not in out and "a paper, Table 1" not in out  # no reference beside quick numbers
    record = json.loads((tmp_path / "q" / "toy-bench.json").read_text())
    assert list(record["variants"]) == ["ours"] and {r["variant"] for r in record["runs"]} == {"ours"}
    assert record["seeds"] == [0] and record["quick"] and record["note"] == "quick: not comparable"
    assert record["references"] == {}
    assert (tmp_path / "q" / "toy-bench-curves.png").is_file() and (tmp_path / "q" / "toy-bench-parity.png").is_file()


def test_a_full_bench_runs_every_variant_beside_the_references(tmp_path, monkeypatch, capsys, textbook_csv):
    registry = _bench_registry(tmp_path, monkeypatch, textbook_csv)
    assert main(["--registry", registry, "bench", "toy-bench", "--seeds", "0", "--results", str(tmp_path / "full"),
                 "--set", "train.epochs=2", *TINY_SET]) == 0
    out = capsys.readouterr().out
    assert "quick: not comparable" not in out and "Somebody 2020" in out and "a paper, Table 1" in out
    record = json.loads((tmp_path / "full" / "toy-bench.json").read_text())
    assert list(record["variants"]) == ["ours", "narrow"] and "Somebody 2020" in record["references"]


def test_the_quick_results_folder_is_git_ignored():
    """`zoo bench all --quick` writes benchmarks/results/quick: its files must never show up to be committed."""
    try:
        done = subprocess.run(["git", "check-ignore", "-q", "benchmarks/results/quick/molecule-solubility.json"],
                              cwd=ROOT, capture_output=True)
    except OSError:
        pytest.skip("no git")
    if done.returncode == 128:
        pytest.skip("not a git checkout")
    assert done.returncode == 0, "benchmarks/results/quick/ is not in .gitignore"
    tracked = subprocess.run(["git", "ls-files", "benchmarks/results/quick"], cwd=ROOT, capture_output=True, text=True)
    assert not tracked.stdout.strip()


# ---- plots redrawn from the results JSON; references cited ------------------------------------------------

def test_replot_redraws_curves_and_confusion_from_the_json_alone(tmp_path):
    history = lambda member=None: [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_macro_f1": 0.5 + 0.1 * e,
                                    **({"member": member} if member is not None else {})} for e in range(2)]
    record = {"task": "toy", "metric": "macro_f1", "quick": False, "seeds": [0, 1], "classes": ["a", "b"],
              "variants": {"ours": {}, "other": {}},
              "runs": [{"variant": "ours", "seed": 0, "history": history(), "confusion": [[3, 1], [0, 4]]},
                       {"variant": "ours", "seed": 1, "history": history(0) + history(1),  # an ensemble
                        "confusion": [[2, 0], [1, 5]]},
                       {"variant": "other", "seed": 0, "val": {"macro_f1": 0.4}, "best_epoch": 0},  # no history kept
                       {"variant": "RF", "seed": 0, "baseline": True}]}
    (tmp_path / "toy.json").write_text(json.dumps(record))
    assert replot(tmp_path / "toy.json") == [tmp_path / "toy-curves.png", tmp_path / "toy-confusion.png"]
    assert all(p.stat().st_size > 1000 for p in tmp_path.glob("*.png"))


def test_every_committed_results_file_can_be_redrawn(tmp_path):
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        if "runs" in json.loads(path.read_text()):
            (tmp_path / path.name).write_text(path.read_text())
            for png in replot(tmp_path / path.name):
                assert png.parent == tmp_path and png.is_file()


def test_every_registry_reference_names_where_it_comes_from():
    registry = load_registry()
    for name in registry.names():
        for ref_name, ref in registry.task(name).references.items():
            assert ref.source and len(ref.source) > 20, f"{name}: {ref_name}: no source"
            assert "memory" not in ref.source.lower(), f"{name}: {ref_name}: cited from memory"


def test_a_matbench_bench_writes_a_submission_file_that_grows_a_fold_at_a_time(tmp_path):
    import gzip

    table = tmp_path / "gaps.csv"
    formulas = 3 * ["NaCl", "KCl", "MgO", "CaO", "GaAs", "Si", "ZnO", "TiO2", "Al2O3", "SiO2", "GaN", "InP", "CdS",
                    "ZnS"]
    split = [matbench_split(list(range(42)), (0.75, 0.05, 0.2), fold)[2] for fold in (0, 1)]
    formulas[split[0][0]] = "G1128Ga1As0.1P0.9"  # expt_gap's corrupt formula, in fold 0's test rows
    table.write_text("composition,gap expt\n" + "".join(f"{f},{1 + i / 7:.3f}\n" for i, f in enumerate(formulas)))
    small = ["--set=train.epochs=1", "--set=fusion.dim=16", "--set=head.hidden=16"]
    for fold in ("0", "1"):
        assert main(["bench", "materials-bandgap", "--data", str(table), "--folds", fold, "--merge", "--results",
                     str(tmp_path), *small]) == 0
    record = json.loads(gzip.decompress((tmp_path / "materials-bandgap-matbench.json.gz").read_bytes()))
    results = record["tasks"]["matbench_expt_gap"]["results"]
    assert sorted(results) == ["fold_0", "fold_1"]  # the second call kept the first call's fold
    # the row the model could not read still has a value (the fold's training mean), and the metadata says why
    assert list(record["user_metadata"]["filled"]) == [f"mb-expt-gap-{split[0][0] + 1:04d}"]
    for fold, test in enumerate(split):
        data = results[f"fold_{fold}"]["data"]
        assert sorted(data) == sorted(f"mb-expt-gap-{i + 1:04d}" for i in test)
        assert set(results[f"fold_{fold}"]["scores"]) == {"mae", "rmse", "mape", "max_error"}
