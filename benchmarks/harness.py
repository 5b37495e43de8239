"""The loop every benchmark script shares: one training run per registry seed (or Matbench fold), ours
printed beside the registry's references, a results JSON and a parity plot, optional bundling.

A task script names its task and, where it compares variants (a from-scratch encoder against a pretrained
one, one modality against the fused model), passes them as registry overrides.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

import zoo
from tasks import METRICS, SPLITS, score
from tasks.metrics import tag_sequences
from tasks.ner import entity_scores
from zoo.data import data_file
from zoo.artifacts import BUNDLED, sha256_file, versions
from zoo.model import ZooModel
from zoo.registry import TaskSpec, parse_overrides
from zoo.tables import read_dataset
from tasks.baselines import Baseline
from zoo.train import _family_metrics, fixed_test_set, prepare

HERE = Path(__file__).resolve().parent


def featurization_rate(model: ZooModel, rows: list[dict], limit: int = 2000) -> float:
    """Rows per second through the task's featurization on one core (first ``limit`` rows, nothing cached)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sample = rows[:limit]
    model.featurize(sample[0])  # loads any pretrained backbone outside the timing
    start = time.perf_counter()
    for row in sample:
        try:
            model.featurize(row)
        except zoo.InputError:
            pass
    torch.set_num_threads(threads)
    return len(sample) / (time.perf_counter() - start)


def parity_plot(runs: list[dict], path: Path, spec: TaskSpec, title: str) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    for run in runs:
        true, pred = np.ravel(run["test_true"]), np.ravel(run["test_pred"])
        ax.scatter(true, pred, s=6, alpha=0.5,
                   label=f"{run['variant']} {run['seed']}: {spec.metric.upper()} {run['test'][spec.metric]:.3f}")
    lo, hi = ax.get_xlim()
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    unit = spec.head.unit or ""
    ax.set(xlabel=f"measured ({unit})", ylabel=f"predicted ({unit})", title=title)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def detail(model: ZooModel, predictions: dict) -> dict:
    """What a task family reports beyond its metric: per target scores for several regression targets, per
    entity type scores for tagging."""
    spec = model.spec
    if spec.head.type == "regression" and len(spec.head.targets) > 1:
        true, pred = np.asarray(predictions["true"], float), np.asarray(predictions["pred"], float)
        return {"test_per_target": {t: score(spec.metric, true[:, j], pred[:, j])
                                    for j, t in enumerate(spec.head.targets)}}
    if spec.head.type != "token-classification":
        return {}
    names = dict(enumerate(model.head.labels))
    rename = lambda rows: [[t if t == "O" else f"{t[:2]}{names[int(t[2:])]}" for t in r] for r in rows]
    gold, pred = rename(tag_sequences(predictions["true"])), rename(tag_sequences(predictions["pred"]))
    pred = [p[: len(g)] + ["O"] * (len(g) - len(p)) for g, p in zip(gold, pred)]
    return {"test_per_type": entity_scores(gold, pred)}


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def summarise(runs: list[dict], metrics: tuple[str, ...]) -> dict:
    """Mean and std over runs of each test metric, and the mean per target where runs score targets apart."""
    out = {"test": {m: {"mean": float(np.mean([r["test"][m] for r in runs])),
                        "std": float(np.std([r["test"][m] for r in runs]))} for m in metrics}}
    if runs and "test_per_target" in runs[0]:
        out["test_per_target"] = {t: float(np.mean([r["test_per_target"][t] for r in runs]))
                                  for t in runs[0]["test_per_target"]}
    return out


def main(task: str, doc: str, variants: dict[str, dict] | None = None, seed_name: str = "seed",
         baseline: tuple[str, Baseline] | None = None) -> int:
    """``variants``: name -> registry overrides, each run on the same seeds; the first is the task's own.
    ``baseline``: (name, fit_predict) run on every seed's split of the first variant's featurized rows, the
    same rows and split ours trains on (for tasks split from one file); it fits on the training and validation
    rows together, having nothing to early-stop."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="the data file (default: $ZOO_DATA/<dataset>/<file>, or ../shared/data)")
    p.add_argument(f"--{seed_name}s", dest="seeds", type=int, nargs="+", help=f"{seed_name}s (default: the registry's)")
    p.add_argument("--variants", nargs="+", help=f"which variants to run (default: all of {list(variants or {})})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a registry key")
    p.add_argument("--results", default=str(HERE / "results"), help="folder for the JSON and the plot")
    p.add_argument("--bundle", action="store_true", help="ship the best-validation model of the first variant")
    args = p.parse_args()

    variants = variants or {"ours": {}}
    chosen = {k: v for k, v in variants.items() if not args.variants or k in args.variants}
    base = parse_overrides(args.set)
    spec = zoo.info(task, overrides=base)
    os.environ.setdefault("ZOO_DATA", str(HERE.parent.parent / "shared" / "data"))
    data = Path(args.data) if args.data else data_file(spec, spec.data.file)
    rows = read_dataset(data, spec.data.reader)
    data_sha = sha256_file(data)
    test = fixed_test_set(spec, spec.data.test_file and data.parent / spec.data.test_file)

    runs, rates, work = [], {}, Path(tempfile.mkdtemp(prefix="scizoo-bench-"))
    for variant, overrides in chosen.items():
        v_spec = zoo.info(task, overrides={**base, **overrides})
        rates[variant] = featurization_rate(ZooModel(v_spec), rows)
        print(f"[{variant}] featurization: {rates[variant]:,.0f} rows/s on one core")
        for seed in args.seeds or spec.data.seeds:
            seed_spec = zoo.info(task, overrides={**base, **overrides, "train.seed": seed})
            start = time.perf_counter()
            model, m = zoo.Trainer(seed_spec, out=work / f"{variant}-{seed}").fit(rows, data_sha256=data_sha, **test)
            wall = time.perf_counter() - start
            weights_mb = (work / f"{variant}-{seed}" / "model.safetensors").stat().st_size / 1e6
            runs.append({"variant": variant, "seed": seed, "val": m["val"], "test": m["test"],
                         "best_epoch": m["best_epoch"], "epochs_run": m["epochs_run"], "wall_s": round(wall, 1),
                         "weights_mb": round(weights_mb, 2), **detail(model, m["test_predictions"]),
                         "test_true": m["test_predictions"]["true"], "test_pred": m["test_predictions"]["pred"]})
            print(f"[{variant}] {seed_name} {seed}: test {spec.metric.upper()} {m['test'][spec.metric]:.4f} "
                  f"(val {m['val'][spec.metric]:.4f}, best epoch {m['best_epoch']}, {wall:.0f} s, "
                  f"weights {weights_mb:.1f} MB)")
            if "test_per_type" in runs[-1]:
                print(f"[{variant}] per type: " + ", ".join(
                    f"{t} F1 {v['f1']:.3f}" for t, v in runs[-1]["test_per_type"].items()))

    if baseline:
        name, fit_predict = baseline
        for seed in args.seeds or spec.data.seeds:
            model = ZooModel(zoo.info(task, overrides={**base, **next(iter(chosen.values())), "train.seed": seed}))
            prepared = prepare(model, rows, progress=False, data_sha256=data_sha)  # cached by the runs above
            split = model.spec.data
            train_idx, val_idx, test_idx = SPLITS[split.split](prepared.keys, split.fractions, seed)
            start = time.perf_counter()
            pred = np.asarray(fit_predict(prepared.features, prepared.targets, np.concatenate([train_idx, val_idx]),
                                          test_idx))
            predictions = {"true": prepared.targets[test_idx], "pred": pred}
            runs.append({"variant": name, "seed": seed, "baseline": True,
                         "test": {m: score(m, predictions["true"], pred) for m in _family_metrics(spec.metric)},
                         "wall_s": round(time.perf_counter() - start, 1), **detail(model, predictions),
                         "test_true": predictions["true"].tolist(), "test_pred": pred.tolist()})
            print(f"[{name}] {seed_name} {seed}: test {spec.metric.upper()} {runs[-1]['test'][spec.metric]:.4f} "
                  f"({runs[-1]['wall_s']:.0f} s)")

    metrics = _family_metrics(spec.metric)
    groups = {f"SciZoo {v}": v for v in chosen} | ({baseline[0]: baseline[0]} if baseline else {})
    summaries = {v: summarise([r for r in runs if r["variant"] == v], metrics) for v in groups.values()}
    print(f"\n{'model':<34} " + " ".join(f"{'test ' + m.upper():>17}" for m in metrics))
    for label, v in groups.items():
        cells = [f"{summaries[v]['test'][m]['mean']:>8.4f} ± {summaries[v]['test'][m]['std']:.4f}" for m in metrics]
        print(f"{label:<34} {' '.join(cells)}  ({seed_name}s {[r['seed'] for r in runs if r['variant'] == v]})")
    summary_by_variant = {v: {"mean": summaries[v]["test"][spec.metric]["mean"],
                              "std": summaries[v]["test"][spec.metric]["std"],
                              "featurization_rows_per_s": round(rates[v], 1), **summaries[v]} for v in chosen}
    for name, ref in spec.references.items():
        print(f"{name:<34} {ref.value:.4f}{f' ± {ref.std:.4f}' if ref.std is not None else ''}  ({ref.source})")

    if "test_per_target" in runs[0]:
        print(f"\n{'test ' + spec.metric.upper() + ' per target (mean)':<34} " + " ".join(f"{g:>17}" for g in groups))
        for t in spec.head.targets:
            print(f"{t:<34} " + " ".join(f"{summaries[v]['test_per_target'][t]:>17.4f}" for v in groups.values()))

    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    if spec.head.type == "regression":
        parity_plot(runs, results / f"{task}-parity.png", spec, f"{task}: test sets")
    first = next(iter(chosen))
    summary = {
        "task": task, "metric": spec.metric, "split": f"{spec.data.split} {list(spec.data.fractions)}",
        "data": data.name, "data_sha256": data_sha,
        "mean": summary_by_variant[first]["mean"], "std": summary_by_variant[first]["std"],
        "variants": summary_by_variant,
        **({"baseline": {"name": baseline[0], **summaries[baseline[0]]}} if baseline else {}),
        "runs": [{k: v for k, v in r.items() if k not in ("test_true", "test_pred")} for r in runs],
        "references": {k: v.model_dump() for k, v in spec.references.items()},
        "overrides": {"all": args.set, **{k: v for k, v in chosen.items()}},
        "versions": versions(), "git_commit": git_commit(),
    }
    (results / f"{task}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {results / f'{task}.json'}")

    if args.bundle:
        sign = -1 if METRICS[spec.metric].higher_is_better else 1
        best = min((r for r in runs if r["variant"] == first), key=lambda r: sign * r["val"][spec.metric])
        target = BUNDLED / task
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(work / f"{first}-{best['seed']}", target,
                        ignore=shutil.ignore_patterns("metrics.jsonl", "checkpoint.pt"))  # the artifact only
        print(f"bundled {first} {seed_name} {best['seed']} (val {spec.metric} {best['val'][spec.metric]:.4f}) "
              f"into {target}")
    shutil.rmtree(work, ignore_errors=True)
    return 0
