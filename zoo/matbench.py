"""A Matbench submission file of our per-fold predictions, so they compare with the leaderboard on its terms.

The leaderboard reads a ``MatbenchBenchmark`` saved with ``to_file``. ``submission`` builds the same dict as
matbench 0.6 (``bench.py: MatbenchBenchmark.as_dict``, ``task.py: MatbenchTask.record / as_dict``,
``data_ops.py: load / score_array``, ``util.py: immutify_dictionary / hash_dictionary``) with plain json types,
so matbench is no dependency::

    {"@module": "matbench.bench", "@class": "MatbenchBenchmark", "version": "0.6",
     "tasks": {<task>: {"@class": "MatbenchTask", "@module": "matbench.task", "benchmark_name": "matbench_v0.1",
                        "dataset_name": <task>,
                        "results": {"fold_0": {"data": {<matbench id>: prediction, ...}, "parameters": {...},
                                               "scores": {"mae", "mape", "max_error", "rmse"},
                                               "uncertainty": null}, ... "fold_4": ...}}},
     "user_metadata": {...}, "benchmark_name": "matbench_v0.1", "datestamp": "2024.05.01 12:00.00",
     "hash": <sha256 of the rest>}

Matbench names row i (0-based, in its dataset file's order) ``mb-<task less "matbench_", "_" as "-">-<i + 1>``,
zero-padded to the digits of the row count: ``mb-perovskites-00001``, ``mb-expt-gap-0001``. Its folds are
``KFold(5, shuffle=True, random_state=18012019)`` over those positions, as ``tasks.splits.matbench_folds`` makes
them: the ids of our fold-k test rows are exactly matbench_v0.1_validation.json's fold_k test ids.

Caveat: our data files are DeepChem's copy of Matbench v0.1 (shared/data/matbench_perovskites/SOURCE.md), and that
its row order is the official Matbench order was not confirmed. Ids here are by row position, so a file written
from our folds matches the leaderboard's rows only as far as the two orders agree.
"""
from __future__ import annotations

import datetime
import gzip
import hashlib
import json
import math
from pathlib import Path

import numpy as np

from encoders import ZooError
from tasks.splits import matbench_folds
from zoo.artifacts import atomic_write

BENCHMARK = "matbench_v0.1"
VERSION = "0.6"  # the matbench release whose file this mirrors; from_dict only warns on another
FOLDS = range(5)
ROWS = {"matbench_perovskites": 18928, "matbench_expt_gap": 4604}  # n_samples, matbench_v0.1_dataset_metadata.json
MAPE_FLOOR = 1e-5  # matbench's mape leaves out rows whose true value is smaller in magnitude
DATESTAMP = "%Y.%m.%d %H:%M.%S"  # MatbenchBenchmark._DATESTAMP_FMT, in UTC


def mbid(task: str, row: int) -> str:
    """Matbench's id of ``row`` (0-based position in the task's dataset file): 1-based and zero-padded to the
    digits of the row count, as ``data_ops.load`` names them."""
    n = rows_of(task)
    if not 0 <= row < n:
        raise ZooError(f"{task}: row {row} is outside its {n} rows")
    return f"{task.replace('matbench', 'mb').replace('_', '-')}-{row + 1:0{len(str(n))}d}"


def rows_of(task: str) -> int:
    """The row count of a task we can write submissions for."""
    if task not in ROWS:
        raise ZooError(f"unknown Matbench task {task!r}; known: {', '.join(sorted(ROWS))}")
    return ROWS[task]


def scores(truth: list[float], predictions: list[float]) -> dict[str, float]:
    """One fold's regression scores as ``data_ops.score_array`` computes them: mae, rmse, mape (over rows whose
    true value exceeds MAPE_FLOOR in magnitude; NaN when none does) and max_error."""
    y, p = np.asarray(truth, dtype=float), np.asarray(predictions, dtype=float)
    error = np.abs(y - p)
    kept = np.abs(y) > MAPE_FLOOR
    return {"mae": float(error.mean()), "rmse": math.sqrt(float(np.mean(error ** 2))),
            "mape": float(np.mean(error[kept] / np.abs(y[kept]))) if kept.any() else math.nan,
            "max_error": float(error.max())}


def fill_unread(task: str, folds: dict[int, tuple[list[int], list[float]]], targets: list[float]
                ) -> tuple[dict[int, tuple[list[int], list[float]]], dict[str, str]]:
    """Matbench takes a fold only with a prediction for every one of its test rows, but a model cannot read every
    row (expt_gap holds the corrupt formula ``G1128Ga1As0.1P0.9``). Each test row missing from ``folds`` gets
    Matbench's Dummy prediction, the mean of the fold's training ``targets`` (one per dataset row). Returns the
    completed folds and a note per filled row, by Matbench id, for the file's metadata."""
    completed, filled, cuts = {}, {}, matbench_folds(len(targets))
    for fold, (rows, predictions) in folds.items():
        train, test = cuts[fold]
        missing = sorted(set(test.tolist()) - set(rows))
        dummy = float(np.mean([targets[i] for i in train]))
        completed[fold] = ([*rows, *missing], [*predictions, *[dummy] * len(missing)])
        filled |= {mbid(task, i): f"the model cannot read this row: Matbench's Dummy prediction {dummy:.4f} (the "
                                  f"fold-{fold} training mean)" for i in missing}
    return completed, filled


def submission(task: str, folds: dict[int, tuple[list[int], list[float]]],
               truth: dict[int, list[float]] | None = None, parameters: dict | None = None,
               metadata: dict | None = None) -> dict:
    """A Matbench benchmark record of one task: ``folds`` maps a fold number (0 to 4) to its test rows (0-based
    positions in the dataset file) and the predictions for them in the same order; ``truth`` the true values
    in that order, per fold, for the scores; ``parameters`` goes into every fold's record, ``metadata`` into
    ``user_metadata``.

    Matbench's own validation (run by ``from_file``) accepts only all five folds, each with exactly its test rows,
    and the four scores; without ``truth`` each fold's scores are left empty ({}), as we cannot compute them."""
    rows_of(task)
    results = {f"fold_{fold}": fold_record(task, fold, *folds[fold], None if truth is None else truth.get(fold),
                                           parameters) for fold in sorted(folds)}
    tasks = {task: {"@module": "matbench.task", "@class": "MatbenchTask", "benchmark_name": BENCHMARK,
                    "dataset_name": task, "results": results}}
    record = {"@module": "matbench.bench", "@class": "MatbenchBenchmark", "version": VERSION,
              "tasks": immutify(tasks), "user_metadata": immutify(metadata or {}), "benchmark_name": BENCHMARK,
              "datestamp": datetime.datetime.now(datetime.timezone.utc).strftime(DATESTAMP)}
    record["hash"] = hash_record(record)
    return record


def fold_record(task: str, fold: int, rows: list[int], predictions: list[float], truth: list[float] | None,
                parameters: dict | None) -> dict:
    """One fold's entry under ``results``, as ``MatbenchTask.record`` leaves it when given no std or ci."""
    where = f"{task} fold {fold}"
    if fold not in FOLDS:
        raise ZooError(f"{where}: Matbench folds are numbered 0 to {len(FOLDS) - 1}")
    if len(predictions) != len(rows):
        raise ZooError(f"{where}: {len(predictions)} predictions for {len(rows)} rows")
    if truth is not None and len(truth) != len(rows):
        raise ZooError(f"{where}: {len(truth)} true values for {len(rows)} rows")
    ids = [mbid(task, int(row)) for row in rows]
    if len(set(ids)) != len(ids):
        raise ZooError(f"{where}: a row is given more than once")
    return {"data": dict(zip(ids, map(float, predictions))),  # matbench's validation wants float predictions
            "parameters": dict(parameters or {}),
            "scores": {} if truth is None else scores(truth, predictions),
            "uncertainty": None}


def immutify(d: dict) -> dict:
    """``util.immutify_dictionary``: keys sorted at every dict level, numpy arrays and scalars as plain values.
    Matbench saves the tasks and user metadata this way, and hashes it."""
    plain = {str(k): immutify(v) if isinstance(v, dict) else v.tolist() if hasattr(v, "tolist") else v
             for k, v in d.items()}
    return dict(sorted(plain.items()))


def hash_record(record: dict) -> str:
    """``util.hash_dictionary`` of the record less its hash, the value ``MatbenchBenchmark.from_dict`` checks
    the file against: sha256 of ``json.dumps`` of the key-sorted dict."""
    rest = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(json.dumps(immutify(rest)).encode("utf-8")).hexdigest()


def write_submission(path: Path | str, record: dict) -> None:
    """Write ``record`` atomically: gzipped JSON when ``path`` ends in .json.gz (the leaderboard's
    results.json.gz; matbench's ``to_file`` gzips since it moved to monty's ``dumpfn``), plain JSON otherwise
    (what matbench 0.6's ``to_file`` wrote under any name, and all its ``from_file`` reads)."""
    path = Path(path)
    text = json.dumps(record)
    if path.name.endswith(".json.gz"):
        atomic_write(path, lambda tmp: tmp.write_bytes(gzip.compress(text.encode("utf-8"), mtime=0)))
    else:
        atomic_write(path, lambda tmp: tmp.write_text(text))
