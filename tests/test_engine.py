"""The training engine at scale: two-process DDP on CPU (gloo), and a SIGKILLed run resumed exactly."""
import json
import os
import signal
import subprocess
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

import zoo
from tests.conftest import ROOT, TINY

# 40 rows -> 32 training rows = 4 global batches of 8, split 4 + 4 across two ranks
DDP = {**TINY, "train.batch_size": 8, "train.epochs": 2, "train.warmup_epochs": 1}


def _ddp_worker(rank: int, world: int, init: str, rows: list[dict], out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model, _ = zoo.Trainer(zoo.info("molecule-solubility", overrides=DDP), progress=False, device="cpu").fit(rows)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_ddp_matches_one_process_with_the_same_global_batch(tmp_path, textbook_rows):
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_ddp_worker, args=(2, init, textbook_rows, str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # DDP keeps every rank's parameters identical

    torch.manual_seed(0)
    # on the CPU like the gloo ranks, also where a GPU is (auto would put this one there, the ranks not)
    single, _ = zoo.Trainer(zoo.info("molecule-solubility", overrides=DDP), progress=False,
                            device="cpu").fit(textbook_rows)
    changed = 0
    for key, value in single.state_dict().items():
        torch.testing.assert_close(rank0[key], value, atol=1e-5, rtol=1e-4)
        changed += not torch.equal(value, zoo.ZooModel(single.spec).state_dict()[key])
    assert changed > 0  # training moved the parameters, so the match is not two untrained models


def _train(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "zoo", "train", *args], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_a_sigkilled_run_resumes_to_the_same_final_metrics(tmp_path, textbook_csv):
    sets = [f"--set={k}={v}" for k, v in {**TINY, "train.batch_size": 8, "train.epochs": 150, "train.patience": 150,
                                            "train.checkpoint_every": 3}.items()]
    common = ["molecule-solubility", "--data", str(textbook_csv), *sets]
    clean = _train([*common, "--out", str(tmp_path / "clean")])
    killed = _train([*common, "--out", str(tmp_path / "killed")])
    log = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and len(log.read_text().splitlines()) >= 20):
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL  # killed mid-run, not after it finished
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    resumed = _train(["--resume", str(tmp_path / "killed")])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert clean.wait(timeout=300) == 0, clean.stderr.read()
    final = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("clean", "killed")]
    for key in ("best_epoch", "epochs_run", "val", "test"):
        assert final[0][key] == final[1][key]
    epochs = [json.loads(line)["epoch"] for line in log.read_text().splitlines()]
    assert epochs == list(range(150))  # the resumed log has every epoch once


def test_resume_refuses_a_folder_with_nothing_to_resume(tmp_path):
    from zoo.cli import main

    assert main(["train", "--resume", str(tmp_path)]) == 2


def test_predict_under_torchrun_shards_chunks_and_joins_them_in_input_order(tmp_path):
    out = tmp_path / "sharded.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "zoo",
               "predict", "molecule-solubility", "--input", "examples/molecules.csv", "--chunk-rows", "4"]
    done = subprocess.run([*command, "--output", str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    single = subprocess.run([sys.executable, "-m", "zoo", "predict", "molecule-solubility", "--input",
                             "examples/molecules.csv", "--chunk-rows", "4", "--output", str(tmp_path / "one.csv")],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    assert out.read_bytes() == (tmp_path / "one.csv").read_bytes()
