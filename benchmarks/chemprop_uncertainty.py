"""Peer baseline: chemprop v2's own uncertainty estimation and calibration on ESOL, on exactly our splits.

    python benchmarks/chemprop_uncertainty.py [--seeds 0 1 2] [--epochs 50] [--ensemble-size 5] [--threads 1] [--quick]

For each seed, ``tasks.splits.random_split`` (0.8/0.1/0.1, as molecule-solubility uses it) is written as a chemprop
``--splits-file`` and chemprop's CLI trains, on CPU, (a) one mean-variance estimation model
(``--task-type regression-mve``) and (b) an ensemble of plain regression models (``--ensemble-size``). Each model
keeps its best-validation-loss checkpoint. ``chemprop predict`` then scores the test rows with
``--uncertainty-method mve`` or ``ensemble`` (the variance of the members' predictions), once with each
``--calibration-method`` fitted on the validation rows (``--cal-path``):

- ``none``: the raw variance;
- ``zscaling``: the variance times a factor fitted by Gaussian NLL; chemprop gives no interval here, so the 90%
  interval is mean +- 1.645 sigma (``interval`` says so in the JSON);
- ``conformal-regression`` with ``--conformal-alpha 0.1``: chemprop's split-conformal interval; its output is the
  half width (chemprop adds the conformal quantile of ``|error| - unc`` to ``unc``, here the variance).

Test figures: RMSE, Spearman rho between |error| and sigma (or the half width), coverage and mean width of the 90%
interval, and for the Gaussian sigmas the miscalibration area (mean |observed - expected| coverage of central
Gaussian intervals at levels 0.01..0.99, as chemprop's ``miscalibration_area`` evaluator computes it). chemprop's
own evaluators are run too and their logged values kept under ``chemprop_evaluators`` as a cross-check. Writes
``benchmarks/results/chemprop-uncertainty.json`` (``--quick``: seed 0, 5 epochs, ensemble of 2, under
``results/quick/``).

chemprop is never a dependency of this package. As in ``benchmarks/featurizer.py``, ``$CHEMPROP_PATH`` (default:
``chemprop-bench`` beside the repository) holds ``pip install --target ../chemprop-bench chemprop==2.3.1 --no-deps``;
its CLI needs more than that environment has, which ``$CHEMPROP_DEPS`` (default: ``chemprop-bench-deps`` beside the
repository) holds, made with

    pip install --no-deps --target ../chemprop-bench-deps lightning==2.6.6 lightning-utilities==0.15.3 \\
        torchmetrics==1.9.0 configargparse==1.9.0 multiprocess==0.70.19 dill==0.4.1 astartes==1.3.3 \\
        descriptastorus==2.8.0 pandas-flavor==0.8.1 xarray==2026.9.0 six==1.17.0 myerson==1.0.1

(``--no-deps`` keeps the environment's torch, RDKit, numpy and pandas). chemprop also imports ``cuik_molmaker`` at
module level, a compiled extension pinned to another RDKit build and used only with
``--use-cuikmolmaker-featurization``: the CLI runs with an empty stand-in for it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rdkit import Chem, RDLogger
from scipy.stats import norm, spearmanr

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tasks.splits import random_split  # noqa: E402

RDLogger.DisableLog("rdApp.*")

SMILES, TARGET = "smiles", "measured log solubility in mols per litre"
ALPHA = 0.1  # a 90% interval
Z90 = float(norm.ppf(1 - ALPHA / 2))
CALIBRATIONS = ("none", "zscaling", "conformal-regression")
# chemprop's evaluators worth logging per calibration: its coverage evaluator reads the output as a half width
EVALUATORS = {"none": ["spearman", "miscalibration_area"], "zscaling": ["spearman", "miscalibration_area"],
              "conformal-regression": ["spearman", "conformal-coverage-regression"]}
# Runs chemprop's CLI with an empty cuik_molmaker (see the docstring)
LAUNCHER = ("import sys, types; sys.modules['cuik_molmaker'] = types.ModuleType('cuik_molmaker'); "
            "from chemprop.cli.main import main; sys.argv[0] = 'chemprop'; main()")


def load_esol() -> pd.DataFrame:
    data = Path(os.environ.get("ZOO_DATA", ROOT.parent / "shared" / "data"))
    table = pd.read_csv(data / "moleculenet_esol" / "delaney-processed.csv")[[SMILES, TARGET]]
    # our trainer drops unparsable rows before splitting; with none dropped, split indices are table rows
    bad = [s for s in table[SMILES] if Chem.MolFromSmiles(s) is None]
    assert not bad, f"{len(bad)} ESOL SMILES fail to parse: {bad[:5]}"
    return table


def chemprop(args: list[str], log: Path) -> str:
    """Run one chemprop CLI command on CPU; return its log."""
    paths = [os.environ.get("CHEMPROP_PATH", str(ROOT.parent / "chemprop-bench")),
             os.environ.get("CHEMPROP_DEPS", str(ROOT.parent / "chemprop-bench-deps"))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    cmd = [sys.executable, "-c", LAUNCHER, *args, "--accelerator", "cpu", "--num-workers", "0"]
    with open(log, "w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    text = log.read_text()
    if done.returncode:
        sys.exit(f"chemprop {args[0]} failed ({done.returncode}); log tail:\n{text[-3000:]}")
    return text


def train(work: Path, name: str, task_type: str, ensemble_size: int, epochs: int, seed: int) -> list[Path]:
    """Train on work/data.csv with work/splits.json; return the members' best checkpoints."""
    out = work / name
    chemprop(["train", "-i", str(work / "data.csv"), "-s", SMILES, "--target-columns", TARGET,
              "--task-type", task_type, "--ensemble-size", str(ensemble_size), "--epochs", str(epochs),
              "--splits-file", str(work / "splits.json"), "--pytorch-seed", str(seed), "-o", str(out)],
             work / f"{name}-train.log")
    return [out / f"model_{i}" / "best.pt" for i in range(ensemble_size)]


def best_epochs(models: list[Path]) -> list[int]:
    """The epoch of each member's kept checkpoint, from its file name (best-epoch=N-...)."""
    return [int(re.search(r"best-epoch=(\d+)", p.name).group(1))
            for m in models for p in (m.parent / "checkpoints").glob("best-epoch=*")]


def predict(work: Path, models: list[Path], method: str, calibration: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Predict the test rows: means, uncertainties (as chemprop writes them) and chemprop's evaluator values."""
    out = work / f"{models[0].parent.parent.name}-{calibration}.csv"
    args = ["predict", "-i", str(work / "test.csv"), "-s", SMILES, "--model-paths", *map(str, models),
            "--uncertainty-method", method, "--evaluation-methods", *EVALUATORS[calibration], "-o", str(out)]
    if calibration != "none":
        args += ["--calibration-method", calibration, "--cal-path", str(work / "val.csv"),
                 "--conformal-alpha", str(ALPHA)]
    log = chemprop(args, out.with_suffix(".log"))
    evaluators = {k: float(v) for k, v in re.findall(r"INFO:chemprop\.cli\.predict - ([\w-]+): \[([^\]]+)\]", log)}
    preds = pd.read_csv(out)  # the target column now holds the predictions
    return preds[TARGET].to_numpy(), preds[f"{TARGET}_unc"].to_numpy(), evaluators


def miscalibration_area(errors: np.ndarray, sigma: np.ndarray) -> float:
    """Mean |observed - expected| coverage of central Gaussian intervals at levels 0.01..0.99 (chemprop's sum/100)."""
    levels = np.arange(1, 100) / 100
    observed = (np.abs(errors)[None, :] <= sigma[None, :] * norm.ppf((1 + levels) / 2)[:, None]).mean(1)
    return float(np.abs(observed - levels).sum() / 100)


def score(y: np.ndarray, mean: np.ndarray, unc: np.ndarray, calibration: str) -> dict:
    errors = mean - y
    if calibration == "conformal-regression":
        half, sigma, interval = unc, None, "chemprop's conformal interval: mean +- its output (variance + quantile)"
    else:
        sigma = np.sqrt(unc)
        half, interval = Z90 * sigma, f"mean +- {Z90:.3f} sigma, sigma = sqrt(chemprop's variance)"
    return {"rmse": float(np.sqrt(np.mean(errors**2))),
            "spearman_rho": float(spearmanr(np.abs(errors), half).statistic),
            "coverage_90": float(np.mean(np.abs(errors) <= half)),
            "mean_width_90": float(np.mean(2 * half)),
            "miscalibration_area": None if sigma is None else miscalibration_area(errors, sigma),
            "interval": interval}


def run_seed(table: pd.DataFrame, seed: int, epochs: int, ensemble_size: int, work: Path) -> dict[str, dict]:
    """Train both estimators on one split and score every (estimator, calibration) pair on its test rows."""
    train_idx, val_idx, test_idx = random_split(list(range(len(table))), (0.8, 0.1, 0.1), seed)
    table.to_csv(work / "data.csv", index=False)
    table.iloc[val_idx].to_csv(work / "val.csv", index=False)
    table.iloc[test_idx].to_csv(work / "test.csv", index=False)
    (work / "splits.json").write_text(json.dumps(
        [{"train": train_idx.tolist(), "val": val_idx.tolist(), "test": test_idx.tolist()}]))
    y = table[TARGET].to_numpy()[test_idx]
    estimators = {"mve": ("regression-mve", 1), f"ensemble{ensemble_size}": ("regression", ensemble_size)}
    results = {}
    for name, (task_type, size) in estimators.items():
        start = time.perf_counter()
        models = train(work, name, task_type, size, epochs, seed)
        train_s = round(time.perf_counter() - start, 1)
        for calibration in CALIBRATIONS:
            mean, unc, evaluators = predict(work, models, "mve" if size == 1 else "ensemble", calibration)
            results[f"{name}+{calibration}"] = {"seed": seed, **score(y, mean, unc, calibration),
                                                "chemprop_evaluators": evaluators,
                                                "best_epochs": best_epochs(models), "train_s": train_s}
        print(f"seed {seed} {name}: " + ", ".join(
            f"{c} cov {results[f'{name}+{c}']['coverage_90']:.3f}" for c in CALIBRATIONS)
            + f", rmse {results[f'{name}+none']['rmse']:.3f} ({train_s} s)", flush=True)
    return results


def summarize(per_seed: list[dict]) -> dict:
    keys = ("rmse", "spearman_rho", "coverage_90", "mean_width_90", "miscalibration_area")
    return {k: float(np.mean([r[k] for r in per_seed])) if per_seed[0][k] is not None else None for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=50, help="chemprop's default")
    parser.add_argument("--ensemble-size", type=int, default=5)
    # two threads on the 2 shared cores ran 2-4x slower than one whenever anything else was running
    parser.add_argument("--threads", type=int, default=1, help="torch threads per chemprop run")
    parser.add_argument("--quick", action="store_true", help="smoke run: seed 0, 5 epochs, ensemble of 2")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.ensemble_size = [0], 5, 2

    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read by torch in each chemprop run
    table = load_esol()
    start = time.perf_counter()
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="chemprop-uncertainty-") as tmp:
        for seed in args.seeds:
            work = Path(tmp) / f"seed{seed}"
            work.mkdir()
            for method, result in run_seed(table, seed, args.epochs, args.ensemble_size, work).items():
                runs.setdefault(method, []).append(result)

    report = {
        "tool": "chemprop 2.3.1",
        "task": "molecule-solubility",
        "data": f"ESOL delaney-processed.csv, {len(table)} rows (all parse), target '{TARGET}'",
        "split": f"ours: random 0.8/0.1/0.1, seeds {', '.join(map(str, args.seeds))}",
        "budget": {"device": f"cpu, {args.threads} torch thread(s)", "epochs": args.epochs,
                   "early_stopping": "none (chemprop's patience = epochs)",
                   "checkpoint": "best validation loss", "ensemble_size": args.ensemble_size,
                   "model": "chemprop defaults (depth 3, hidden 300, 1 FFN layer, batch 64, Noam lr 1e-4/1e-3/1e-4)",
                   "pytorch_seed": "the split seed (+ member index)"},
        "calibration": f"fitted on the validation rows, which also chose the checkpoint; alpha {ALPHA} (90%)",
        "methods": {m: {"per_seed": rs, "mean": summarize(rs)} for m, rs in runs.items()},
        "wall_s": round(time.perf_counter() - start, 1),
        "command": " ".join(["python benchmarks/chemprop_uncertainty.py", *sys.argv[1:]]),
    }
    results = Path(__file__).parent / "results" / ("quick" if args.quick else "")
    results.mkdir(parents=True, exist_ok=True)
    path = results / "chemprop-uncertainty.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    for method, summary in report["methods"].items():
        print(method, json.dumps({k: v if v is None else round(v, 3) for k, v in summary["mean"].items()}))
    print(f"wrote {path} ({report['wall_s']} s)")


if __name__ == "__main__":
    main()
