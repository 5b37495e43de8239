"""Batch inference over a table: streamed in chunks, each row's prediction written beside its input columns.

A row that cannot be featurized gets its reason in the ``error`` column and no prediction; the others run.
The output file appears only when complete (written under a temporary name, then renamed).
"""
from __future__ import annotations

import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from encoders import ZooError
from zoo.artifacts import atomic_write
from zoo.model import ZooModel
from zoo.tables import TableWriter, iter_table, read_rows


@dataclass
class Summary:
    rows: int = 0
    n_failed: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)  # (row number, reason) of the first few

    def line(self) -> str:
        shown = "; ".join(f"row {i}: {why}" for i, why in self.failed)
        more = " ..." if self.n_failed > len(self.failed) else ""
        return f"predicted {self.rows - self.n_failed} of {self.rows} rows; {self.n_failed} failed" + (
            f" ({shown}{more})" if self.n_failed else "")


def _output_names(model: ZooModel, columns: list[str]) -> dict[str, str]:
    """Prediction column per target: its name, or ``<name>_predicted`` where the input has that column."""
    return {t: (f"{t}_predicted" if t in columns else t) for t in model.spec.head.targets}


def _check_columns(model: ZooModel, schema: pa.Schema, path: Path) -> None:
    wanted = [i.column for i in model.spec.inputs.values()]
    if not set(wanted) & set(schema.names):
        raise ZooError(f"{path}: no column {' or '.join(repr(c) for c in wanted)} needed by task "
                       f"{model.spec.name!r} (columns: {', '.join(schema.names) or 'none'})")


def _output_columns(model: ZooModel, results: list[dict], names: dict[str, str]) -> dict[str, pa.Array]:
    """The head's outputs as columns: numbers as float32, anything else (entity lists) as JSON text."""
    if model.spec.head.type in ("regression", "multilabel"):
        return {names[t]: pa.array([r.get(t) for r in results], pa.float32()) for t in names}
    text = lambda v: v if v is None or isinstance(v, str) else json.dumps(v)
    return {k: pa.array([text(r.get(k)) for r in results], pa.string()) for k in model.head.outputs}


def _rank(model: ZooModel, candidates: Path, top: int, batch_size: int):
    """A function from query rows to their ``top`` best candidates (JSON text) or errors."""
    head = model.head
    pool = read_rows(candidates)
    column = model.spec.inputs[head.candidate].column
    embedded, failed = model.embed(pool, head.candidate, batch_size)
    usable = np.array([i for i in range(len(pool)) if i not in failed], dtype=np.int64)
    if not len(usable):
        raise ZooError(f"{candidates}: no usable candidate (row 0: {failed.get(0, 'no rows')})")
    matrix = embedded[usable]
    if failed:
        shown = "; ".join(f"row {i}: {why}" for i, why in list(failed.items())[:3])
        print(f"skipped {len(failed)} of {len(pool)} candidates ({shown})", file=sys.stderr)

    def rank(rows: list[dict]) -> list[dict]:
        queries, errors = model.embed(rows, head.query, batch_size)
        results = [{"error": errors[i]} if i in errors else {} for i in range(len(rows))]
        ok = [i for i in range(len(rows)) if i not in errors]
        if ok:
            scores = queries[ok] @ matrix.T
            best = np.argsort(-scores, axis=1)[:, :top]
            for i, order, row_scores in zip(ok, best, scores):
                results[i] = {"matches": [{"rank": r + 1, "row": int(usable[j]), column: pool[usable[j]].get(column),
                                           "score": round(float(row_scores[j]), 4)} for r, j in enumerate(order)]}
        return results

    return rank


def predict_table(model: ZooModel, path: str | Path, output: str | Path | None = None, chunk_rows: int = 4096,
                  batch_size: int = 256, progress: bool = True, candidates: str | Path | None = None,
                  top: int = 10) -> Summary:
    """Predict every row of a table; for a retrieval task, rank the rows of ``candidates`` for each row."""
    path = Path(path)
    if hasattr(model.head, "query") and candidates is None:
        raise ZooError(f"task {model.spec.name!r} ranks candidates: give --candidates TABLE "
                       f"(with column {model.spec.inputs[model.head.candidate].column!r})")
    predict = _rank(model, Path(candidates), top, batch_size) if candidates else (
        lambda rows: model.predict(rows, batch_size=batch_size))
    batches = iter_table(path, chunk_rows)
    first = next(batches, None)
    if first is None:
        raise ZooError(f"{path}: the table has no rows")
    _check_columns(model, first.schema, path)
    names = _output_names(model, first.schema.names)
    summary = Summary()

    def run(out: Path | None) -> None:
        writer = None
        bar = tqdm(desc=f"predict {model.spec.name}", unit="row", disable=None if progress else True)
        for batch in itertools.chain([first], batches):
            results = predict(batch.to_pylist())
            for offset, r in enumerate(results):
                if "error" in r:
                    summary.n_failed += 1
                    if len(summary.failed) < 5:
                        summary.failed.append((summary.rows + offset, r["error"]))
            summary.rows += len(results)
            columns = _output_columns(model, results, names)
            columns["error"] = pa.array([r.get("error") for r in results], pa.string())
            table = batch
            for name, values in columns.items():
                table = table.append_column(name, values)
            writer = writer or TableWriter(out, table.schema)
            writer.write(table)
            bar.update(len(results))
        bar.close()
        writer.close()

    if output is None:
        run(None)
    else:
        atomic_write(Path(output), run)
    return summary
