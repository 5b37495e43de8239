"""zoo bench: data files found and hash-checked (local folder, download cache, mismatch), the README table
generated from the results, and every registry task's protocol run end to end on a --quick subset."""
from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile

import pytest
import yaml
from conftest import ROOT, SHARED_DATA

from encoders import ZooError
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
