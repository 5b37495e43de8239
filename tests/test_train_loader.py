"""Training batches through a DataLoader: worker processes change nothing but who does the work (same batches,
same losses, same weights, the global RNG untouched), a failed run leaves no worker behind and resumes exactly,
and the device is the one asked for (a GPU that is not there is a one-line error)."""
from __future__ import annotations

import importlib
import json
import multiprocessing
import os

import numpy as np
import pytest
import torch

import zoo
from encoders import ZooError
from tests.conftest import TINY
from zoo.cli import main
from zoo.model import ZooModel
from zoo.model import resolve_device, resolve_workers
from zoo.train import BatchLoader, Trainer, prepare

engine = importlib.import_module("zoo.train")  # the module (the attribute zoo.train is the function)

# dropout on, so a shift of the global RNG (a DataLoader seeding its workers from it) would change the weights
SETTINGS = {**TINY, "train.batch_size": 8, "train.epochs": 3, "train.accumulate": 2,
            "encoders.molecule-dmpnn.dropout": 0.2}
SETS = [f"--set={k}={v}" for k, v in TINY.items()] + ["--set=train.epochs=2"]


def _fit(rows, workers, out=None, device="cpu", **more):
    spec = zoo.info("molecule-solubility", overrides={**SETTINGS, **more})
    return Trainer(spec, out, progress=False, device=device, workers=workers).fit(rows)


def test_two_workers_train_the_same_model_as_none(textbook_rows, tmp_path):
    runs = {w: _fit(textbook_rows, w, tmp_path / str(w)) for w in (0, 2)}
    logs = {w: [json.loads(line) for line in (tmp_path / str(w) / "metrics.jsonl").read_text().splitlines()]
            for w in runs}
    assert all(record.pop("epoch_s") > 0 for w in logs for record in logs[w])
    assert logs[0] == logs[2]  # every epoch's train loss and validation RMSE, to the last digit
    assert runs[0][1]["test"] == runs[2][1]["test"]
    for key, value in runs[0][0].state_dict().items():
        assert torch.equal(value, runs[2][0].state_dict()[key]), key
    assert not multiprocessing.active_children()  # the run's workers stopped with it


def test_featurizing_in_workers_keeps_rows_order_and_reasons(textbook_rows):
    rows = textbook_rows * 3 + [{"smiles": "not-a-smiles", "measured log solubility in mols per litre": 1.0},
                                {"smiles": "CCO", "measured log solubility in mols per litre": None}]
    model = ZooModel(zoo.info("molecule-solubility", overrides=TINY))
    here, there = prepare(model, rows, progress=False), prepare(model, rows, progress=False, workers=2)
    assert here.skipped == there.skipped and len(here.skipped) == 2
    assert np.array_equal(here.rows, there.rows) and here.keys == there.keys
    for a, b in zip(here.features, there.features):
        assert all(np.array_equal(getattr(a["smiles"], f), getattr(b["smiles"], f))
                   for f in ("atoms", "mass", "bonds", "pairs"))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_pass_leaves_the_global_rng_alone(textbook_rows, workers):
    model = ZooModel(zoo.info("molecule-solubility", overrides=TINY))
    data = prepare(model, textbook_rows, progress=False)
    loader = BatchLoader(model, data, workers)
    try:
        before = torch.get_rng_state()
        for _ in range(2):  # twice: kept workers are resumed, not restarted
            got = [y for _, y, _ in loader([np.arange(5), np.arange(5, 12)])]
        assert torch.equal(before, torch.get_rng_state())
        assert [len(y) for y in got] == [5, 7]
        assert torch.equal(torch.cat(got)[:, 0], torch.as_tensor(data.targets[:12, 0], dtype=torch.float32))
    finally:
        loader.close()


def test_a_run_that_failed_leaves_no_worker_and_resumes_to_the_same_result(textbook_rows, tmp_path, monkeypatch):
    _, clean = _fit(textbook_rows, 2, tmp_path / "clean", **{"train.checkpoint_every": 1})
    real, calls = engine.score, []

    def fail_second_validation(*args):
        calls.append(1)
        if len(calls) == 2:  # epoch 1 trained to its last step, checkpointed, not yet validated
            raise RuntimeError("stopped")
        return real(*args)

    monkeypatch.setattr(engine, "score", fail_second_validation)
    with pytest.raises(RuntimeError, match="stopped"):
        _fit(textbook_rows, 2, tmp_path / "failed", **{"train.checkpoint_every": 1})
    assert not multiprocessing.active_children()
    monkeypatch.setattr(engine, "score", real)
    spec = zoo.info("molecule-solubility", overrides={**SETTINGS, "train.checkpoint_every": 1})
    _, resumed = Trainer(spec, tmp_path / "failed", progress=False, device="cpu", workers=2).fit(
        textbook_rows, resume=True)  # resumes at the end of an epoch: a pass with no batch left in it
    assert resumed["val"] == clean["val"] and resumed["test"] == clean["test"]
    assert resumed["best_epoch"] == clean["best_epoch"]


def test_cli_train_on_cpu_with_workers_auto(textbook_csv, tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["train", "molecule-solubility", "--data", str(textbook_csv), "--out", str(out), *SETS,
                 "--device", "cpu", "--workers", "auto"]) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 2
    assert "saved to" in capsys.readouterr().out


def test_worker_counts():
    cores = len(os.sched_getaffinity(0))
    assert resolve_workers("auto") == cores
    assert resolve_workers("3") == resolve_workers(3) == 3 and resolve_workers("0") == 0
    with pytest.raises(ZooError, match="expected a number or auto"):
        resolve_workers("many")
    with pytest.raises(ZooError, match="expected 0"):
        resolve_workers(-1)


def test_auto_workers_are_shared_by_the_processes_of_a_machine(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")
    assert resolve_workers("auto") == 1


def test_a_device_name_torch_cannot_read_is_a_one_line_error(textbook_csv, tmp_path, capsys):
    assert main(["train", "molecule-solubility", "--data", str(textbook_csv), "--out", str(tmp_path / "m"),
                 "--device", "tpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zoo: error: device 'tpu'") and "\n" not in err
    assert not (tmp_path / "m").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_a_one_line_error(textbook_csv, tmp_path, capsys):
    assert main(["train", "molecule-solubility", "--data", str(textbook_csv), "--out", str(tmp_path / "m"),
                 "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "zoo: error: device 'cuda': torch sees no CUDA GPU here (use --device cpu or auto)"
    assert not (tmp_path / "m").exists()  # refused before anything was written
    with pytest.raises(ZooError, match="no CUDA GPU"):
        Trainer(zoo.info("molecule-solubility"), device="cuda:0")


def test_auto_is_the_gpu_when_there_is_one():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_the_gpu_workers_pin_batches_and_train_the_same_model(textbook_rows):
    assert resolve_device("cuda") == torch.device("cuda", 0)  # a bare cuda is this process's own GPU
    model = ZooModel(zoo.info("molecule-solubility", overrides=TINY)).cuda()
    data = prepare(model, textbook_rows, progress=False)
    loader = BatchLoader(model, data, 2, torch.device("cuda"))
    try:
        for batch, y, mask in loader([np.arange(8)]):
            assert y.is_pinned() and mask.is_pinned() and batch["smiles"]["atoms"].is_pinned()
    finally:
        loader.close()
    runs = {w: _fit(textbook_rows, w, device="cuda", **{"encoders.molecule-dmpnn.dropout": 0.0}) for w in (0, 2)}
    assert next(runs[2][0].parameters()).device.type == "cuda"
    # scatter-adds on a GPU sum in no fixed order: the same model to bf16 rounding, not to the bit
    assert runs[2][1]["test"]["rmse"] == pytest.approx(runs[0][1]["test"]["rmse"], rel=0.05)
    assert runs[0][1]["test"]["rmse"] < 10
