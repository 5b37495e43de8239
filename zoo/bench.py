"""`zoo bench TASK|all`: reproduce a registry task's benchmark and write what it measured.

The protocol is the registry's: the data set (hash-checked, see ``zoo.data``), the split, one training run per
seed (or Matbench fold), the metric, and the task's ``bench:`` variants (registry overrides, e.g. a from-scratch
encoder against a pretrained one, one modality against the fused model) and baselines (``tasks.baselines``).
Ours is printed beside the registry's references; ``<results>/<task>.json`` records every run, mean and std,
wall time, versions, git commit and data sha256, with plots: parity (regression), confusion matrix
(classification) and learning curves (redrawn from the JSON alone by ``replot``, ``benchmarks/replot.py``).

``--quick`` is a smoke test of the same code path, sized for CI: per task only its first (own) variant, the first
seed, ``QUICK_ROWS`` rows (``QUICK_TEST_ROWS`` of a fixed test set) and ``QUICK_EPOCHS`` epochs, plus the task's
baselines. Its numbers say only that the protocol runs: they are printed without the references, marked
"quick: not comparable", and written to ``benchmarks/results/quick`` (git-ignored).
"""
from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import tempfile
import time
import tomllib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
import numpy as np
import torch

from encoders import InputError, ZooError
from tasks import METRICS, score
from tasks.baselines import BASELINES
from tasks.metrics import class_labels, tag_sequences
from tasks.ner import entity_scores
from zoo.artifacts import BUNDLED, sha256_file, versions
from zoo.checkpoint import NAME as CHECKPOINT
from zoo.data import data_file
from zoo.matbench import fill_unread, submission, write_submission
from zoo.model import ZooModel
from zoo.registry import Registry, TaskSpec
from zoo.tables import read_dataset
from zoo.train import Trainer, _family_metrics, fixed_test_set, prepare, split

QUICK_ROWS, QUICK_TEST_ROWS, QUICK_EPOCHS = 240, 120, 2
QUICK_RATE_ROWS = 50  # rows timed for the featurization rate of a --quick run


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
        except InputError:
            pass
    torch.set_num_threads(threads)
    return len(sample) / (time.perf_counter() - start)


def detail(model: ZooModel, predictions: dict) -> dict:
    """What a task family reports beyond its metric: per target scores for several regression targets, per
    entity type scores for tagging."""
    spec = model.spec
    if model.head.kind == "values" and len(spec.head.targets) > 1:
        true, pred = np.asarray(predictions["true"], float), np.asarray(predictions["pred"], float)
        return {"test_per_target": {t: score(spec.metric, true[:, j], pred[:, j])
                                    for j, t in enumerate(spec.head.targets)}}
    if model.head.kind != "tags":
        return {}
    names = dict(enumerate(model.head.labels))
    rename = lambda rows: [[t if t == "O" else f"{t[:2]}{names[int(t[2:])]}" for t in r] for r in rows]
    gold, pred = rename(tag_sequences(predictions["true"])), rename(tag_sequences(predictions["pred"]))
    pred = [p[: len(g)] + ["O"] * (len(g) - len(p)) for g, p in zip(gold, pred)]
    return {"test_per_type": entity_scores(gold, pred)}


def recipe(spec) -> dict:
    """What a run trained with, whatever the registry said then: its training settings (but the seed, which is
    the split's) and split fractions. Runs with equal recipes are one benchmark row."""
    return {"train": spec.train.model_dump(exclude={"seed"}), "fractions": list(spec.data.fractions)}


def summarise(runs: list[dict], metrics: tuple[str, ...]) -> dict:
    """Mean and std over runs of each test metric, the mean per target where runs score targets apart, and the
    mean of each calibration figure where runs have a trust summary (``zoo.trust.calibration``)."""
    out = {"test": {m: {"mean": float(np.mean([r["test"][m] for r in runs])),
                        "std": float(np.std([r["test"][m] for r in runs]))} for m in metrics}}
    if runs and "test_per_target" in runs[0]:
        out["test_per_target"] = {t: float(np.mean([r["test_per_target"][t] for r in runs]))
                                  for t in runs[0]["test_per_target"]}
    calibrated = [r["calibration"] for r in runs if r.get("calibration")]
    if calibrated:
        out["calibration"] = {k: float(np.mean([c[k] for c in calibrated])) for k, v in calibrated[0].items()
                              if isinstance(v, float) and all(k in c for c in calibrated)}
    return out


CALIBRATION = {"coverage": "coverage", "mean_width": "mean width", "mean_set_size": "mean set size",
               "spearman_abs_error_sigma": "Spearman rho(|error|, sigma)", "miscalibration_area": "miscalibration area",
               "ece": "ECE", "in_domain": "in domain"}


def calibration_line(summary: dict) -> str:
    """One line of a variant's mean calibration figures, as bench prints them."""
    c = summary["calibration"]
    shown = ", ".join(f"{label} {c[k]:.3f}" for k, label in CALIBRATION.items() if k in c)
    level = f", {c['interval']:.0%} intervals" if "interval" in c else ""
    return f"test calibration{level}: {shown}"


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


# ---- plots ---------------------------------------------------------------------------------------------
# Every line or point set gets its own colour, line style and marker, so runs that coincide (an ensemble member
# trained exactly as a single-model variant, or two folds that converge alike) still show one over the other.

STYLES, MARKERS = ("-", "--", "-.", ":"), ("o", "s", "^", "D", "v", "P", "X")
QUICK_NOTE = "quick: not comparable"


def _look(i: int) -> dict:
    return {"color": f"C{i % 10}", "linestyle": STYLES[i % len(STYLES)], "marker": MARKERS[i % len(MARKERS)]}


def _suffix(quick: bool) -> str:
    return f" ({QUICK_NOTE})" if quick else ""


def parity_plot(runs: list[dict], path: Path, task: str, metric: str, unit: str | None = None, *,
                seed_name: str = "seed", targets: int = 1, quick: bool = False) -> None:
    """Predicted against measured on each run's test set; one colour per variant, one marker per seed. Baselines
    are drawn first, as crosses, so the model's points lie on top."""
    fig, ax = plt.subplots(figsize=(5.2, 5.2), dpi=120, layout="constrained")
    groups = list(dict.fromkeys(r["variant"] for r in sorted(runs, key=lambda r: bool(r.get("baseline")))))  # ours: C0
    lo, hi, seen = np.inf, -np.inf, {}
    for run in sorted(runs, key=lambda r: not r.get("baseline")):
        true, pred = np.ravel(run["test_true"]).astype(float), np.ravel(run["test_pred"]).astype(float)
        keep = np.isfinite(true) & np.isfinite(pred)
        g, k = groups.index(run["variant"]), seen.get(run["variant"], 0)
        seen[run["variant"]] = k + 1
        baseline = bool(run.get("baseline"))
        ax.scatter(true[keep], pred[keep], s=7 if baseline else 6, alpha=0.35 if baseline else 0.55, linewidths=0.6,
                   color=f"C{g % 10}", marker="x" if baseline else MARKERS[k % len(MARKERS)],
                   label=f"{run['variant']}{' (baseline)' if baseline else ''} {seed_name} {run['seed']}: "
                         f"{metric.upper()} {run['test'][metric]:.3f}")
        if keep.any():
            lo, hi = min(lo, true[keep].min(), pred[keep].min()), max(hi, true[keep].max(), pred[keep].max())
    if np.isfinite(lo):
        pad = 0.03 * (hi - lo or 1)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
        ax.set(xlim=(lo - pad, hi + pad), ylim=(lo - pad, hi + pad))
    unit = f" ({unit})" if unit else ""
    pooled = f", {targets} targets pooled" if targets > 1 else ""
    ax.set(xlabel=f"measured{unit}", ylabel=f"predicted{unit}", title=f"{task}: test sets{pooled}{_suffix(quick)}")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=6, markerscale=2, loc="upper left")
    fig.savefig(path)
    plt.close(fig)


def confusion_counts(run: dict, classes: list[str]) -> list[list[int]]:
    """Rows: true class, columns: predicted, of one run's test set."""
    counts = np.zeros((len(classes), len(classes)), dtype=int)
    true, pred = class_labels(np.asarray(run["test_true"], float), np.asarray(run["test_pred"], float))
    np.add.at(counts, (true.astype(int), pred.astype(int)), 1)
    return counts.tolist()


def confusion_plot(runs: list[dict], path: Path, classes: list[str], task: str, variant: str, *,
                   seed_name: str = "seed", quick: bool = False) -> None:
    """Rows: true class, columns: predicted, summed over the runs given (each seed's test set, from each run's
    ``confusion`` counts); shading is the share of each true class."""
    counts = np.sum([np.asarray(r["confusion"], int) for r in runs], axis=0)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 + 0.45 * len(classes)),) * 2, dpi=120, layout="constrained")
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)  # of each true class
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(counts):
        if n:
            ax.text(j, i, n, ha="center", va="center", fontsize=6, color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true (shading: share of the row)")
    seeds = f"{seed_name}{'s' if len(runs) > 1 else ''} " + ", ".join(str(r["seed"]) for r in runs)
    # two short lines: a long variant name must not run off a small matrix
    ax.set_title(f"{task}: confusion matrix{_suffix(quick)}\n{variant}, test sets of {seeds}", fontsize=8)
    fig.savefig(path)
    plt.close(fig)


def curves_plot(runs: list[dict], path: Path, task: str, metric: str, *, seed_name: str = "seed",
                quick: bool = False) -> None:
    """Training loss and validation metric per epoch, one line per run (per member of an ensemble), each with
    its own colour, style and marker; the legend sits outside the axes so it hides none. A run recorded without
    its per-epoch history (an older results file) is one point: its validation score at its best epoch."""
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(10.5, 3.8), dpi=120, layout="constrained")
    i = 0
    for run in runs:
        history = run.get("history") or []
        members = list(dict.fromkeys(h.get("member") for h in history)) or [None]
        for member in members:
            label = f"{run['variant']} {seed_name} {run['seed']}" + (f", member {member}" if member is not None else "")
            look = _look(i)
            i += 1
            rows = [h for h in history if h.get("member") == member]
            if not rows:  # no history kept: the one validation score there is, at its epoch
                epoch = run.get("best_epoch")
                if isinstance(epoch, int) and metric in run.get("val", {}):
                    val_ax.plot([epoch], [run["val"][metric]], linestyle="none", marker=look["marker"], ms=7,
                                color=look["color"], label=f"{label} (best epoch only)")
                continue
            every = max(1, len(rows) // 12)  # markers on long curves: a dozen, not one per epoch
            kw = dict(**look, markevery=every, ms=4, lw=1.3, alpha=0.85, label=label)
            epochs = [h["epoch"] for h in rows]
            loss_ax.plot(epochs, [h["train_loss"] for h in rows], **kw)
            val_ax.plot(epochs, [h.get(f"val_{metric}", np.nan) for h in rows], **kw)
    loss_ax.set(xlabel="epoch", ylabel="training loss", yscale="log")
    val_ax.set(xlabel="epoch", ylabel=f"validation {metric}")
    for ax in (loss_ax, val_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.25)
    handles, labels = val_ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right center", fontsize=7)
    fig.suptitle(f"{task}: learning curves{_suffix(quick)}")
    fig.savefig(path)
    plt.close(fig)


def calibration_plot(runs: list[dict], path: Path, task: str, *, seed_name: str = "seed", quick: bool = False) -> None:
    """Observed against expected coverage of central Gaussian intervals of each run's sigma on its test set: on
    the diagonal, sigma is calibrated; below it, overconfident. The legend gives each run's conformal coverage."""
    fig, ax = plt.subplots(figsize=(5.2, 5.2), dpi=120, layout="constrained")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="calibrated")
    for i, run in enumerate(runs):
        c = run["calibration"]
        ax.plot(c["curve"]["expected"], c["curve"]["observed"], **_look(i), markevery=10, ms=4, lw=1.2,
                label=f"{run['variant']} {seed_name} {run['seed']}: area {c['miscalibration_area']:.3f}"
                      + (f", {c['interval']:.0%} conformal coverage {c['coverage']:.2f}" if "coverage" in c else ""))
    ax.set(xlabel="expected coverage (Gaussian interval of sigma)", ylabel="observed coverage on the test set",
           xlim=(0, 1), ylim=(0, 1), title=f"{task}: calibration{_suffix(quick)}")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=6, loc="upper left")
    fig.savefig(path)
    plt.close(fig)


def replot(path: Path) -> list[Path]:
    """Redraw the plots a results JSON holds what they need for, without training: learning curves from each
    run's history, a confusion matrix from each run's ``confusion`` counts (recorded since these were added).
    Parity plots need every test prediction, which the JSON does not keep: they change with the next real run.
    Returns the files written."""
    record = json.loads(Path(path).read_text())
    task, metric, quick = record["task"], record["metric"], bool(record.get("quick"))
    seed_name = "fold" if "folds" in record else "seed"
    ours = [r for r in record["runs"] if not r.get("baseline")]
    written = []
    if any(r.get("history") for r in ours):
        written.append(Path(path).parent / f"{task}-curves.png")
        curves_plot(ours, written[-1], task, metric, seed_name=seed_name, quick=quick)
    first = next(iter(record.get("variants", {})), None)
    calibrated = [r for r in ours if "curve" in (r.get("calibration") or {})]
    if calibrated:
        written.append(Path(path).parent / f"{task}-calibration.png")
        calibration_plot(calibrated, written[-1], task, seed_name=seed_name, quick=quick)
    counted = [r for r in ours if r["variant"] == first and "confusion" in r]
    if counted and record.get("classes"):
        written.append(Path(path).parent / f"{task}-confusion.png")
        confusion_plot(counted, written[-1], record["classes"], task, first, seed_name=seed_name, quick=quick)
    return written


# ---- one task ------------------------------------------------------------------------------------------

def _subset(rows: list[dict], n: int) -> list[dict]:
    keep = np.sort(np.random.default_rng(0).permutation(len(rows))[:n])
    return [rows[i] for i in keep]


def bench_task(registry: Registry, task: str, *, seeds: list[int] | None = None, variants: list[str] | None = None,
               overrides: dict | None = None, results: Path = Path("benchmarks/results"), quick: bool = False,
               bundle: bool = False, data: str | None = None, merge: bool = False, work: Path | None = None) -> dict:
    """Run ``task``'s benchmark; returns (and writes) its results record. With ``merge``, the runs of the
    task's earlier results file that this call does not redo (other variants, seeds or folds) are kept, so
    an expensive benchmark can be completed one fold or variant at a time. With ``work``, each run's folder
    (model, log, checkpoints) is kept in ``work/<task>/<variant>-<seed>``, and a run found there continues from
    its checkpoint: one killed midway resumes, one that finished is evaluated again without training."""
    base = dict(overrides or {})
    spec = registry.task(task, base)
    if quick:
        base = {"train.epochs": min(spec.train.epochs, QUICK_EPOCHS), **spec.bench.quick, **base}
        spec = registry.task(task, base)
    own = next(iter(spec.bench.variants))  # the task as the registry writes it: the only one ever bundled
    # --quick checks the protocol runs, so one variant is enough: the task's own, unless --variants names others
    wanted = variants or ([own] if quick else None)
    chosen = {k: v for k, v in spec.bench.variants.items() if not wanted or k in wanted}
    if bundle and own not in chosen:
        raise ZooError(f"--bundle ships the task's own variant {own!r}: include it in --variants")
    if bundle:
        bundle_dir()  # an installed package is refused now, not after hours of training
    for variant, variant_overrides in chosen.items():  # before any training: a benchmark is scored on test sets
        data_spec = registry.task(task, {**base, **variant_overrides}).data
        if not data_spec.fractions[2] and not data_spec.test_file and data_spec.cut_by_fractions:
            raise ZooError(f"task {task!r}: variant {variant!r}: data.fractions {list(data_spec.fractions)} leave "
                           "no test set to score a benchmark on")
    seeds = (seeds or spec.data.seeds)[: 1 if quick else None]
    seed_name = "fold" if spec.data.split == "matbench-kfold" else "seed"

    path = Path(data) if data else data_file(spec, spec.data.file)
    rows, data_sha = read_dataset(path, spec.data.reader), sha256_file(path)
    test_path = spec.data.test_file and (path.parent / spec.data.test_file if data else data_file(spec, spec.data.test_file))
    test = fixed_test_set(spec, test_path)
    # --quick: a subset, cached under no hash; a split file names rows of the whole table, which it then keeps
    if quick and spec.data.split != "file":
        rows, data_sha = _subset(rows, QUICK_ROWS), None
        if test:
            test = {"test_rows": _subset(test["test_rows"], QUICK_TEST_ROWS), "test_sha256": None}

    runs, rates, commit = [], {}, git_commit()
    keep = work is not None
    work = Path(work) / task if keep else Path(tempfile.mkdtemp(prefix="scizoo-bench-"))
    try:
        for variant, variant_overrides in chosen.items():
            rates[variant] = featurization_rate(ZooModel(registry.task(task, {**base, **variant_overrides})), rows,
                                                QUICK_RATE_ROWS if quick else 2000)
            print(f"[{task} {variant}] featurization: {rates[variant]:,.0f} rows/s on one core")
            for seed in seeds:
                seed_spec = registry.task(task, {**base, **variant_overrides, "train.seed": seed})
                out = work / f"{variant}-{seed}"
                resume = (out / CHECKPOINT).is_file() or any(out.glob(f"member-*/{CHECKPOINT}"))
                model, m = Trainer(seed_spec, out=out, progress=not quick).fit(rows, data_sha256=data_sha,
                                                                                resume=resume, **test)
                if "test" not in m:
                    raise ZooError(f"task {task!r}: the {spec.data.describe_split()} split leaves no test rows to "
                                   "score a benchmark on")
                wall = m["wall_s"]  # the trainer's: it adds the sessions before a resume
                weights_mb = (out / "model.safetensors").stat().st_size / 1e6
                history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
                runs.append({"variant": variant, "seed": seed, "val": m["val"], "test": m["test"],
                             "best_epoch": m["best_epoch"], "epochs_run": m["epochs_run"], "wall_s": round(wall, 1),
                             **{k: m[k] for k in ("n_train", "n_val", "n_test")},
                             "weights_mb": round(weights_mb, 2), **detail(model, m["test_predictions"]),
                             "history": history, "overrides": {**base, **variant_overrides}, "git_commit": commit,
                             "recipe": recipe(seed_spec),
                             "test_true": m["test_predictions"]["true"], "test_pred": m["test_predictions"]["pred"],
                             "test_rows": m["test_predictions"]["rows"],
                             **({"calibration": m["test_calibration"]} if "test_calibration" in m else {})})
                if model.head.kind == "classes":  # kept in the JSON, so the matrix can be redrawn from it
                    runs[-1]["confusion"] = confusion_counts(runs[-1], model.head.classes)
                print(f"[{task} {variant}] {seed_name} {seed}: test {spec.metric.upper()} "
                      f"{m['test'][spec.metric]:.4f} (val {m['val'][spec.metric]:.4f}, best epoch {m['best_epoch']}, "
                      f"{wall:.0f} s, weights {weights_mb:.1f} MB)")
                if "test_per_type" in runs[-1]:
                    print(f"[{task} {variant}] per type: " + ", ".join(
                        f"{t} F1 {v['f1']:.3f}" for t, v in runs[-1]["test_per_type"].items()))
        for name in spec.bench.baselines:
            runs += _baseline_runs(registry, task, name, {**base, **spec.bench.variants[own]}, rows, data_sha,
                                   seeds, seed_name)
        if bundle:
            _bundle(spec, runs, work, own, seed_name)
        if merge and (results / f"{task}.json").is_file():
            runs, chosen, rates = _merged(json.loads((results / f"{task}.json").read_text()), runs, chosen, rates, spec)
        if spec.data.split == "matbench-kfold" and not quick:
            _matbench_file(spec, runs, rows, results)
        seeds = sorted({r["seed"] for r in runs})
        record = _record(spec, chosen, runs, rates, seeds, seed_name, path, data_sha or sha256_file(path), quick)
        _write(record, runs, spec, results)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return record


def _matbench_file(spec: TaskSpec, runs: list[dict], rows: list[dict], results: Path) -> None:
    """``<task>-matbench.json.gz``, Matbench's submission file (``zoo.matbench``) of the task's own variant: this
    call's folds, and the other folds of the file an earlier call wrote, so folds run one per session make one
    file. Each fold is scored against the data's own targets, over all its test rows: those the model cannot
    read hold Matbench's Dummy prediction, and the file's metadata names them (``fill_unread``)."""
    own = next(iter(spec.bench.variants))
    folds = {r["seed"]: (r["test_rows"], np.ravel(r["test_pred"]).tolist()) for r in runs
             if r["variant"] == own and "test_rows" in r}
    if not folds:
        return
    path, task = results / f"{spec.name}-matbench.json.gz", spec.data.dataset
    column = next(iter(spec.head.targets.values()))
    targets = [float(row[column]) for row in rows]
    folds, filled = fill_unread(task, folds, targets)
    if path.is_file():  # the folds this call did not run, with the notes on the rows filled in them
        earlier = json.loads(gzip.decompress(path.read_bytes()))
        for name, fold in earlier["tasks"][task]["results"].items():
            if (k := int(name.removeprefix("fold_"))) not in folds:
                rows_ids = [int(i.rsplit("-", 1)[1]) - 1 for i in fold["data"]]  # matbench ids are 1-based positions
                folds[k] = (rows_ids, list(fold["data"].values()))
                filled |= {i: note for i, note in earlier["user_metadata"].get("filled", {}).items()
                           if i in fold["data"]}
    truth = {k: [targets[i] for i in index] for k, (index, _) in folds.items()}
    metadata = {"model": f"SciZoo {spec.name} ({own})", "git_commit": git_commit(),
                **({"filled": filled} if filled else {})}
    write_submission(path, submission(task, folds, truth, metadata=metadata))
    print(f"wrote {path} (Matbench submission, folds {', '.join(map(str, sorted(folds)))})")


def _baseline_runs(registry: Registry, task: str, name: str, overrides: dict, rows: list[dict],
                   data_sha: str | None, seeds: list[int], seed_name: str) -> list[dict]:
    """Baseline ``name`` on each seed's split of the task's own featurized rows (the rows its model saw), whichever
    variants this call runs."""
    runs = []
    for seed in seeds:
        model = ZooModel(registry.task(task, {**overrides, "train.seed": seed}))
        prepared = prepare(model, rows, progress=False, data_sha256=data_sha)  # cached by the runs above
        train_idx, val_idx, test_idx = split(prepared, model.spec.data, seed)
        start = time.perf_counter()
        pred = np.asarray(BASELINES[name](prepared.features, prepared.targets,
                                          np.concatenate([train_idx, val_idx]), test_idx))
        predictions = {"true": prepared.targets[test_idx], "pred": pred}
        runs.append({"variant": name, "seed": seed, "baseline": True,
                     "test": {m: score(m, predictions["true"], pred) for m in _family_metrics(model.spec)},
                     "wall_s": round(time.perf_counter() - start, 1), **detail(model, predictions),
                     "test_true": predictions["true"].tolist(), "test_pred": pred.tolist()})
        print(f"[{task} {name}] {seed_name} {seed}: test {model.spec.metric.upper()} "
              f"{runs[-1]['test'][model.spec.metric]:.4f} ({runs[-1]['wall_s']:.0f} s)")
    return runs


def _merged(old: dict, runs: list[dict], chosen: dict, rates: dict, spec: TaskSpec) -> tuple[list, dict, dict]:
    """An earlier results record's runs that ``runs`` do not redo, kept beside them, with their variants."""
    redone = {(r["variant"], r["seed"]) for r in runs}
    kept = [r for r in old["runs"] if (r["variant"], r["seed"]) not in redone]
    names = [v for v in spec.bench.variants if v in chosen or v in old["variants"]]
    chosen = {v: chosen.get(v, spec.bench.variants[v]) for v in names}
    rates = {**{v: old["variants"][v]["featurization_rows_per_s"] for v in old["variants"]}, **rates}
    return kept + runs, chosen, rates


def _record(spec: TaskSpec, chosen: dict, runs: list[dict], rates: dict, seeds: list[int], seed_name: str,
            path: Path, data_sha: str, quick: bool) -> dict:
    metrics = _family_metrics(spec)
    groups = list(chosen) + spec.bench.baselines
    summaries = {v: summarise([r for r in runs if r["variant"] == v], metrics) for v in groups}
    if quick:  # said before the numbers, and no reference beside them
        print(f"\n{QUICK_NOTE}: a smoke test of {spec.name}'s protocol on {QUICK_ROWS} rows, {spec.train.epochs} "
              f"epochs, {seed_name} {seeds[0]}; its scores compare with neither the references nor a full run")
    print(f"\n{'model':<36} " + " ".join(f"{'test ' + m.upper():>17}" for m in metrics))
    for v in groups:
        cells = [f"{summaries[v]['test'][m]['mean']:>8.4f} ± {summaries[v]['test'][m]['std']:.4f}" for m in metrics]
        label = (v if v in spec.bench.baselines else f"SciZoo {v}") + (" (quick)" if quick else "")
        print(f"{label:<36} {' '.join(cells)}  ({seed_name}s {seeds})")
    for name, ref in ({} if quick else spec.references).items():
        print(f"{name:<36} {ref.value:.4f}{f' ± {ref.std:.4f}' if ref.std is not None else ''}  ({ref.source})")
    for v in groups:
        if "calibration" in summaries[v]:
            print(f"{(v if v in spec.bench.baselines else f'SciZoo {v}'):<36} {calibration_line(summaries[v])}")
    if "test_per_target" in runs[0]:
        print(f"\n{'test ' + spec.metric.upper() + ' per target (mean)':<36} " + " ".join(f"{g:>17}" for g in groups))
        for t in spec.head.targets:
            print(f"{t:<36} " + " ".join(f"{summaries[v]['test_per_target'][t]:>17.4f}" for v in groups))
    first = next(iter(chosen))
    by_variant = {v: {"mean": summaries[v]["test"][spec.metric]["mean"], "std": summaries[v]["test"][spec.metric]["std"],
                      "featurization_rows_per_s": round(rates[v], 1), **summaries[v]} for v in chosen}
    return {
        "task": spec.name, "metric": spec.metric, "quick": quick, **({"note": QUICK_NOTE} if quick else {}),
        "split": spec.data.describe_split(), f"{seed_name}s": seeds,
        "data": f"{spec.data.dataset}/{path.name}" if spec.data.dataset else str(path), "data_sha256": data_sha, "data_source": spec.data.source,
        "mean": by_variant[first]["mean"], "std": by_variant[first]["std"], "variants": by_variant,
        "baselines": {name: summaries[name] for name in spec.bench.baselines},
        "runs": [{k: v for k, v in r.items() if k not in ("test_true", "test_pred", "test_rows")} for r in runs],
        # a quick record carries no references: nothing should set its numbers beside them
        "references": {} if quick else {k: v.model_dump() for k, v in spec.references.items()},
        **({"classes": spec.head.params["classes"]} if spec.head.cls.kind == "classes" else {}),
        "overrides": chosen, "wall_s": round(sum(r["wall_s"] for r in runs), 1),
        "versions": versions(), "git_commit": git_commit(),
    }


def _write(record: dict, runs: list[dict], spec: TaskSpec, results: Path) -> None:
    """The record, its parity plot (from this call's test predictions: merged runs from an earlier file have none
    left), and the plots ``replot`` draws from the record itself (curves, confusion matrix)."""
    results.mkdir(parents=True, exist_ok=True)
    predicted = [r for r in runs if "test_true" in r]
    if spec.head.cls.kind == "values" and predicted:
        parity_plot(predicted, results / f"{spec.name}-parity.png", spec.name, spec.metric, spec.head.unit,
                    seed_name="fold" if "folds" in record else "seed", targets=len(spec.head.targets),
                    quick=bool(record["quick"]))
    (results / f"{spec.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    replot(results / f"{spec.name}.json")
    print(f"wrote {results / f'{spec.name}.json'} and its plots")


def bundle_dir() -> Path:
    """Where ``--bundle`` writes: the package's ``weights`` folder, only in a source tree of scizoo (its
    pyproject.toml beside the package), where git and the next wheel see the new weights. An installed package is
    refused: weights written into site-packages would ship nowhere and be lost to the next install."""
    root = BUNDLED.parent.parent
    try:
        name = tomllib.loads((root / "pyproject.toml").read_text())["project"]["name"]
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError):
        name = None
    if name != "scizoo":
        raise ZooError(f"--bundle writes into a source tree of scizoo; this zoo is installed at {BUNDLED.parent} "
                       "(no scizoo pyproject.toml beside it): run it from a clone installed with pip install -e .")
    return BUNDLED


def _bundle(spec: TaskSpec, runs: list[dict], work: Path, first: str, seed_name: str) -> None:
    """Ship the best-validation run of the task's own variant as its bundled weights (the artifact only)."""
    sign = -1 if METRICS[spec.metric].higher_is_better else 1
    best = min((r for r in runs if r["variant"] == first), key=lambda r: sign * r["val"][spec.metric])
    target = bundle_dir() / spec.name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(work / f"{first}-{best['seed']}", target,
                    ignore=shutil.ignore_patterns("metrics.jsonl", "checkpoint.pt", "tensorboard", "*.lock", "member-*",
                                                  "run.yaml", "splits.json", "test_predictions.csv"))
    print(f"bundled {first} {seed_name} {best['seed']} (val {spec.metric} {best['val'][spec.metric]:.4f}) into {target}")
