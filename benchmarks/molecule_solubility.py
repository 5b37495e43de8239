"""Reproduce molecule-solubility: ESOL, random 80/10/10 split, one run per registry seed (0, 1, 2).

    python benchmarks/molecule_solubility.py [--data delaney-processed.csv] [--seeds 0 1 2] [--bundle]

Prints featurization throughput (molecules/s on one core), test RMSE per seed and their mean beside the
references kept in registry.yaml, and writes benchmarks/results/molecule-solubility.json and a parity plot.
``--bundle`` copies the model with the best validation RMSE into the package as its bundled weights.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

import zoo
from zoo.artifacts import BUNDLED, sha256_file, versions
from zoo.model import ZooModel
from zoo.registry import parse_overrides
from zoo.tables import read_rows

TASK = "molecule-solubility"
HERE = Path(__file__).resolve().parent


def featurization_rate(model: ZooModel, smiles: list[str], repeats: int = 3) -> float:
    """Molecules per second through the encoder's featurize on one core (best of ``repeats`` passes)."""
    encoder = model.encoders[model.spec.inputs["smiles"].encoder]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for s in smiles:
            encoder.featurize(s)
        best = min(best, time.perf_counter() - start)
    return len(smiles) / best


def parity_plot(runs: list[dict], path: Path, unit: str) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    for run in runs:
        true, pred = np.ravel(run["test_true"]), np.ravel(run["test_pred"])
        ax.scatter(true, pred, s=8, alpha=0.6, label=f"seed {run['seed']}: RMSE {run['test']['rmse']:.3f}")
    lo, hi = ax.get_xlim()
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set(xlabel=f"measured ({unit})", ylabel=f"predicted ({unit})", title=f"{TASK}: ESOL test sets")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="ESOL csv (default: $ZOO_DATA/moleculenet_esol/delaney-processed.csv)")
    p.add_argument("--seeds", type=int, nargs="+", help="split and initialisation seeds (default: the registry's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a registry key")
    p.add_argument("--results", default=str(HERE / "results"), help="folder for the JSON and the plot")
    p.add_argument("--bundle", action="store_true", help="ship the best-validation model as bundled weights")
    args = p.parse_args()

    spec = zoo.info(TASK, overrides=parse_overrides(args.set))
    root = os.environ.get("ZOO_DATA", str(HERE.parent.parent / "shared" / "data"))
    data = Path(args.data or Path(root) / spec.data.dataset / spec.data.file)
    if not data.is_file():
        print(f"no ESOL file at {data}; pass --data or set ZOO_DATA", file=sys.stderr)
        return 2
    rows = read_rows(data)
    data_sha = sha256_file(data)
    if spec.data.sha256 and data_sha != spec.data.sha256:
        print(f"warning: {data} sha256 {data_sha} differs from the registry's {spec.data.sha256}", file=sys.stderr)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rate = featurization_rate(ZooModel(spec), [r["smiles"] for r in rows])
    torch.set_num_threads(threads)
    print(f"featurization: {rate:,.0f} molecules/s on one core ({len(rows)} ESOL molecules)")

    runs, work = [], Path(tempfile.mkdtemp(prefix="scizoo-bench-"))
    for seed in args.seeds or spec.data.seeds:
        seed_spec = zoo.info(TASK, overrides={**parse_overrides(args.set), "train.seed": seed})
        start = time.perf_counter()
        _, metrics = zoo.Trainer(seed_spec, out=work / f"seed{seed}").fit(rows, data_sha256=data_sha)
        wall = time.perf_counter() - start
        runs.append({"seed": seed, "val": metrics["val"], "test": metrics["test"], "best_epoch": metrics["best_epoch"],
                     "epochs_run": metrics["epochs_run"], "wall_s": round(wall, 1),
                     "test_true": metrics["test_predictions"]["true"], "test_pred": metrics["test_predictions"]["pred"]})
        print(f"seed {seed}: test RMSE {metrics['test']['rmse']:.4f}  MAE {metrics['test']['mae']:.4f}  "
              f"R2 {metrics['test']['r2']:.4f}  (best epoch {metrics['best_epoch']}, {wall:.0f} s)")

    rmse = np.array([r["test"]["rmse"] for r in runs])
    print(f"\n{'model':<28} test RMSE (log mol/L)")
    print(f"{'SciZoo ' + spec.fusion.type + ' D-MPNN':<28} {rmse.mean():.3f} ± {rmse.std():.3f}  (seeds {[r['seed'] for r in runs]})")
    for name, ref in spec.references.items():
        print(f"{name:<28} {ref.value:.3f}{f' ± {ref.std:.3f}' if ref.std is not None else ''}  ({ref.source})")

    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    parity_plot(runs, results / f"{TASK}-parity.png", spec.head.unit or "")
    summary = {
        "task": TASK, "metric": "rmse", "split": "random 80/10/10", "data": str(data.name), "data_sha256": data_sha,
        "featurization_molecules_per_s": round(rate, 1),
        "mean": float(rmse.mean()), "std": float(rmse.std()),
        "runs": [{k: v for k, v in r.items() if not k.startswith("test_")} | {"test": r["test"]} for r in runs],
        "references": {k: v.model_dump() for k, v in spec.references.items()},
        "overrides": args.set, "versions": versions(), "git_commit": git_commit(),
    }
    (results / f"{TASK}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {results / f'{TASK}.json'} and {results / f'{TASK}-parity.png'}")

    if args.bundle:
        best = min(runs, key=lambda r: r["val"]["rmse"])
        target = BUNDLED / TASK
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(work / f"seed{best['seed']}", target, ignore=shutil.ignore_patterns("metrics.jsonl"))
        print(f"bundled seed {best['seed']} (val RMSE {best['val']['rmse']:.4f}) into {target}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
