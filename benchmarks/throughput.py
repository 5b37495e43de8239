"""Throughput and memory: batch inference rows/s and peak RSS against table size, training samples/s.

    python benchmarks/throughput.py [--rows 50000 200000] [--train]

Inference: ``zoo predict molecule-solubility`` (the bundled model) in a fresh process over a generated
molecule table with one bad row in 50; the child reports its own peak RSS (getrusage). Memory should stay flat
as the table grows, since rows stream through in chunks. Training: samples/s of one epoch per task family
on generated rows (molecules; words for the text tagger), on this machine's CPU threads. On a GPU machine
the training part also reports the bf16 autocast speed-up.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SMILES = ["CCO", "c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O", "CC(=O)Nc1ccc(O)cc1", "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
          "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "OCC1OC(O)C(O)C(O)C1O", "Clc1ccc(cc1)C(c1ccccc1)N1CCN(C)CC1"]


# The child reports its own peak RSS (getrusage of itself) as it exits.
CHILD = ("import resource, sys; from zoo.cli import main; rc = main(sys.argv[1:]); "
         "print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")


def write_table(path: Path, n: int) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "smiles"])
        for i in range(n):
            w.writerow([i, "C1CC" if i % 50 == 49 else SMILES[i % len(SMILES)]])


def predict_run(n: int, work: Path) -> dict:
    table, out = work / f"mols-{n}.csv", work / f"pred-{n}.csv"
    write_table(table, n)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, "predict", "molecule-solubility", "--input", str(table),
                           "--output", str(out)], cwd=HERE.parent, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(done.stderr)
    peak_kb = int(done.stderr.rsplit("maxrss_kb", 1)[1])
    with open(out) as f:
        rows = list(csv.DictReader(f))
    return {"rows": n, "output_rows": len(rows), "bad_rows_marked": sum(bool(r["error"]) for r in rows),
            "rows_per_s": round(n / wall, 1), "wall_s": round(wall, 1), "peak_rss_mb": round(peak_kb / 1024, 1),
            "predict_line": done.stderr.splitlines()[0]}


def train_rate(task: str, rows: list[dict], overrides: dict, bf16: bool = False) -> float:
    import zoo

    spec = zoo.info(task, overrides={**overrides, "train.epochs": 1, "train.bf16": bf16})
    start = time.perf_counter()
    _, metrics = zoo.Trainer(spec, progress=False).fit(rows)
    return metrics["n_train"] / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[50_000, 200_000])
    p.add_argument("--train", action="store_true", help="also measure training samples/s")
    p.add_argument("--results", default=str(HERE / "results" / "throughput.json"))
    args = p.parse_args()
    report = {"cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(), "predict": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.rows:
            r = predict_run(n, Path(tmp))
            report["predict"].append(r)
            print(f"predict {n:>9,} rows: {r['rows_per_s']:>8,.0f} rows/s, peak RSS {r['peak_rss_mb']:,.0f} MB, "
                  f"{r['output_rows']:,} rows out, {r['bad_rows_marked']:,} bad rows marked")
    if args.train:
        molecules = [{"smiles": SMILES[i % len(SMILES)], "measured log solubility in mols per litre": i % 7}
                     for i in range(2000)]
        words = [{"text": ["IL-2", "activates", "the", "c-fos", "gene", "in", "T", "cells", "."] * 3,
                  "tags": ["B-protein", "O", "O", "B-DNA", "I-DNA", "O", "B-cell_type", "I-cell_type", "O"] * 3}
                 for _ in range(256)]
        report["train_samples_per_s"] = {
            "molecule-solubility (D-MPNN)": round(train_rate("molecule-solubility", molecules, {}), 1),
            "bio-ner (MiniLM, LoRA)": round(train_rate("bio-ner", words, {}), 1),
        }
        if torch.cuda.is_available():
            report["train_samples_per_s"]["bio-ner (MiniLM, LoRA, bf16)"] = round(
                train_rate("bio-ner", words, {}, bf16=True), 1)
        for name, rate in report["train_samples_per_s"].items():
            print(f"train {name}: {rate:,.0f} samples/s")
    Path(args.results).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
