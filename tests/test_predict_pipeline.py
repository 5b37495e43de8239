"""Prediction's pipeline: worker processes prepare chunks (featurize, batch, collate) ahead of the model, the
output is the same as in one process, and the device and worker options read as documented."""
from __future__ import annotations

import csv
import platform

import pytest
import torch

import zoo
from zoo.cli import main
from zoo.model import RowChunks, resolve_device, resolve_workers, reuse_freed_memory
from tests.conftest import TEXTBOOK

BAD = ["C1CC", "", "CC(C)(C)(C)C", "not a molecule"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """60 rows, one bad in five, so with --chunk-rows 7 each worker gets several chunks, some with errors."""
    path = tmp_path_factory.mktemp("pipeline") / "mols.csv"
    smiles = [BAD[i // 5 % len(BAD)] if i % 5 == 4 else TEXTBOOK[i % len(TEXTBOOK)] for i in range(60)]
    path.write_text("id,smiles\n" + "".join(f"{i},{s}\n" for i, s in enumerate(smiles)))
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_workers_write_the_same_table_as_the_main_process(table, tmp_path, suffix):
    outputs = {}
    for workers in ("0", "2", "auto"):
        out = tmp_path / f"out-{workers}{suffix}"
        assert main(["predict", "molecule-solubility", "--input", str(table), "--output", str(out),
                     "--chunk-rows", "7", "--batch-size", "3", "--workers", workers]) == 0
        outputs[workers] = out.read_bytes()
    assert outputs["2"] == outputs["0"] and outputs["auto"] == outputs["0"]


def test_workers_stream_to_stdout_in_input_order(table, capfd):
    assert main(["predict", "molecule-solubility", "--input", str(table), "--chunk-rows", "7",
                 "--workers", "2"]) == 0
    rows = list(csv.DictReader(capfd.readouterr().out.splitlines()))
    assert [row["id"] for row in rows] == [str(i) for i in range(60)]


def test_a_prepared_chunk_carries_features_only_for_a_head_that_describes_with_them():
    model = zoo.load("molecule-solubility", device="cpu")
    prepared = model.prepare(3, [{"smiles": "CCO"}, {"smiles": "C1CC"}, {"smiles": "c1ccccc1"}])
    assert prepared.chunk == 3 and prepared.rows == 3 and list(prepared.errors) == [1]
    assert sorted(i for batch in prepared.batches for i in batch.index) == [0, 2]
    assert all(batch.features is None for batch in prepared.batches)  # a regression head reads no features


def test_row_chunks_cover_every_row_once_in_order():
    rows = [{"n": i} for i in range(10)]
    chunks = list(RowChunks(rows, size=4))
    assert [k for k, _ in chunks] == [0, 1, 2] and [r["n"] for _, c in chunks for r in c] == list(range(10))


def test_auto_is_the_gpu_when_there_is_one_else_the_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert zoo.load("molecule-solubility").device.type == resolve_device("auto").type


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_a_gpu_asked_for_on_a_machine_without_one_is_one_line(table, capsys):
    assert main(["predict", "molecule-solubility", "--input", str(table), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA GPU" in err and "--device cpu" in err


@pytest.mark.parametrize("device", ["tpu", "cuda:x"])
def test_an_unknown_device_is_one_line(table, capsys, device):
    assert main(["predict", "molecule-solubility", "--input", str(table), "--device", device]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and device in err


def test_workers_auto_is_one_per_usable_core_and_bad_counts_are_refused(table, capsys):
    import os
    assert resolve_workers("auto") == len(os.sched_getaffinity(0))
    assert resolve_workers("3") == 3 and resolve_workers(0) == 0
    for bad in ("-1", "many"):
        assert main(["predict", "molecule-solubility", "--input", str(table), "--workers", bad]) == 2
        assert bad in capsys.readouterr().err


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_allocator_setting_applies_under_glibc():
    # mallopt answers 0 for a parameter or value it refuses, so a wrong constant fails here
    assert reuse_freed_memory() is True
