"""What fine-tuning CHGNet costs: seconds per training epoch of materials-property, CHGNet frozen and fine-tuned.

    ZOO_DATA=/path/to/data python benchmarks/chgnet_finetune_cost.py [--cells 384] [--threads 1 2]

The first ``--cells`` perovskites of the task's data, in batches of 128 (the registry's), through the registry's
model (CHGNet + composition, cross-attention fusion) with ``inputs.structure`` frozen and at ``top-k`` 1, 2 and
5 (all of CHGNet). For each: featurization's seconds per cell (paid once: features are cached with the data
set; at the most threads), and one epoch of forward, loss, backward and AdamW step, after one warm-up step, at
each thread count. Also CHGNet's forward alone without gradients: the most that caching the frozen stages'
output could save a fine-tuning epoch. Each epoch is extrapolated, per cell, to the 15,142 cells of a Matbench
fold's training set (80% of 18,928).
"""
from __future__ import annotations

import argparse
import gzip
import json
import time

import numpy as np
import torch

import zoo
from zoo.data import data_file
from zoo.model import ZooModel

FOLD_CELLS = 15_142
BATCH = 128
TRANSFERS = {
    "frozen": {"inputs.structure.transfer": "frozen"},
    "top-k 1": {"inputs.structure.transfer": "top-k", "inputs.structure.top_k": 1},
    "top-k 2": {"inputs.structure.transfer": "top-k", "inputs.structure.top_k": 2},
    "top-k 5 (all)": {"inputs.structure.transfer": "top-k", "inputs.structure.top_k": 5},
}


def perovskites(n: int) -> list[dict]:
    spec = zoo.info("materials-property")
    with gzip.open(data_file(spec, spec.data.file), "rt") as f:
        return [json.loads(line) for line, _ in zip(f, range(n))]


def batches(model: ZooModel, rows: list[dict]) -> tuple[list[tuple], float]:
    """The rows collated in batches of BATCH with their targets, and featurization's seconds per cell."""
    began = time.perf_counter()
    features = [f for f, _ in model.featurize_rows(rows)]
    per_cell = (time.perf_counter() - began) / len(rows)
    y = torch.as_tensor(model.targets(rows), dtype=torch.float32)
    model.head.fit(y.numpy())
    return [(model.collate(features[i : i + BATCH]), y[i : i + BATCH], ~torch.isnan(y[i : i + BATCH]))
            for i in range(0, len(rows), BATCH)], per_cell


def epoch_seconds(model: ZooModel, data: list[tuple]) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step(batch, y, mask):
        optimizer.zero_grad(set_to_none=True)
        model.head.loss(model(batch), y, mask).backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()

    model.train()
    step(*data[0])  # first-call allocations, outside the timing
    began = time.perf_counter()
    for batch in data:
        step(*batch)
    return time.perf_counter() - began


def forward_seconds(model: ZooModel, data: list[tuple]) -> float:
    encoder = model.encoders["crystal-chgnet"]
    with torch.no_grad():
        encoder._run_chgnet(data[0][0]["structure"])
        began = time.perf_counter()
        for batch, _, _ in data:
            encoder._run_chgnet(batch["structure"])
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=384)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    args = parser.parse_args()
    rows = perovskites(args.cells)
    print(f"{len(rows)} perovskites, batch {BATCH}; an epoch extrapolated to {FOLD_CELLS:,} cells per cell")
    print(f"{'transfer':<16} {'threads':>7} {'featurize s/cell':>16} {f'epoch s ({len(rows)})':>14} "
          f"{f'epoch s ({FOLD_CELLS:,})':>17}")
    for name, overrides in TRANSFERS.items():
        torch.manual_seed(0)
        model = ZooModel(zoo.info("materials-property", overrides=overrides))
        torch.set_num_threads(max(args.threads))  # featurization, paid once, at the most threads
        data, featurize = batches(model, rows)
        # top-k 1 also times CHGNet's no-grad forward alone: how much of its epoch the frozen stages take
        timed = [(name, epoch_seconds, f"{featurize:.4f}")] + (
            [("  CHGNet no-grad", forward_seconds, "")] if name == "top-k 1" else [])
        for label, measure, shown in timed:
            for threads in sorted(set(args.threads)):
                torch.set_num_threads(threads)
                seconds = measure(model, data)
                print(f"{label:<16} {threads:>7} {shown:>16} {seconds:>14.1f} "
                      f"{seconds / len(rows) * FOLD_CELLS:>17.0f}", flush=True)

if __name__ == "__main__":
    main()
