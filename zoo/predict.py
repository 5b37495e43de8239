"""Batch inference over a table: streamed in chunks, each row's prediction written beside its input columns.

A row that cannot be featurized gets its reason in the ``error`` column and no prediction; the others run.
The output file appears only when complete (written under a temporary name, then renamed).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from encoders import ZooError
from zoo.artifacts import atomic_write, exclusive
from zoo.distributed import barrier, rank_and_world
from zoo.model import ZooModel
from zoo.tables import TableWriter, iter_table, read_rows, table_format


@dataclass
class Summary:
    rows: int = 0
    n_failed: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)  # (row number, reason) of the first few

    def add(self, table: pa.Table) -> None:
        """Count a predicted chunk's rows and note the first few failures."""
        for offset, why in enumerate(table.column("error").to_pylist()):
            if why is not None:
                self.n_failed += 1
                if len(self.failed) < 5:
                    self.failed.append((self.rows + offset, why))
        self.rows += len(table)

    def line(self) -> str:
        shown = "; ".join(f"row {i}: {why}" for i, why in self.failed)
        more = " ..." if self.n_failed > len(self.failed) else ""
        return f"predicted {self.rows - self.n_failed} of {self.rows} rows; {self.n_failed} failed" + (
            f" ({shown}{more})" if self.n_failed else "")


def _output_names(model: ZooModel, columns: list[str]) -> dict[str, str]:
    """Column per output: its name, or ``<name>_predicted`` where the input already has that column."""
    return {t: (f"{t}_predicted" if t in columns else t) for t in model.head.outputs}


def _check_columns(model: ZooModel, schema: pa.Schema, path: Path) -> None:
    wanted = [i.column for i in model.spec.inputs.values()]
    if not set(wanted) & set(schema.names):
        raise ZooError(f"{path}: no column {' or '.join(repr(c) for c in wanted)} needed by task "
                       f"{model.spec.name!r} (columns: {', '.join(schema.names) or 'none'})")


def _output_columns(model: ZooModel, results: list[dict], names: dict[str, str]) -> dict[str, pa.Array]:
    """The head's outputs as columns: numbers as float32, text as it is, anything else (entity lists, ranked
    matches) as JSON text."""
    def cell(value):
        return value if value is None or isinstance(value, str) else json.dumps(value)

    return {names[k]: pa.array([r.get(k) for r in results], pa.float32()) if k in model.head.numeric
            else pa.array([cell(r.get(k)) for r in results], pa.string()) for k in model.head.outputs}


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
                  top: int = 10, resume: bool = False, workers: int = 0) -> Summary:
    """Predict every row of a table; for a retrieval task, rank the rows of ``candidates`` for each row.

    With an output file, each chunk of rows is first written as its own part (Arrow IPC, atomically) in
    ``.<output>.parts/``, and the parts are joined in input order at the end: ``resume`` keeps the parts
    an interrupted run finished, and under torchrun each rank predicts every world-th chunk.
    """
    path = Path(path)
    if hasattr(model.head, "query") and candidates is None:
        raise ZooError(f"task {model.spec.name!r} ranks candidates: give --candidates TABLE "
                       f"(with column {model.spec.inputs[model.head.candidate].column!r})")
    predict = _rank(model, Path(candidates), top, batch_size) if candidates else (
        lambda rows: model.predict(rows, batch_size=batch_size, workers=workers))
    batches = iter_table(path, chunk_rows)
    first = next(batches, None)
    if first is None:
        raise ZooError(f"{path}: the table has no rows")
    _check_columns(model, first.schema, path)
    names = _output_names(model, first.schema.names)

    def predicted(batch: pa.RecordBatch) -> pa.Table:
        results = predict(batch.to_pylist())
        columns = _output_columns(model, results, names)
        columns["error"] = pa.array([r.get("error") for r in results], pa.string())
        table = pa.Table.from_batches([batch])
        for name, values in columns.items():
            table = table.append_column(name, values)
        return table

    chunks = itertools.chain([first], batches)
    bar = tqdm(desc=f"predict {model.spec.name}", unit="row", disable=None if progress else True)
    if output is None:  # stdout: stream as we go
        summary, writer = Summary(), None
        for batch in chunks:
            table = predicted(batch)
            summary.add(table)
            writer = writer or TableWriter(None, table.schema)
            writer.write(table)
            bar.update(len(table))
        writer.close()
        return summary

    output = Path(output)
    parts = output.parent / f".{output.name}.parts"
    rank, world = rank_and_world()
    # Rank 0 holds a lock beside the output for the whole run: a second predict into it would clear or mix
    # this run's parts.
    lock = exclusive(output.parent / f".{output.name}.lock", f"{output}: another zoo predict is writing it; wait "
                     "for it to finish or write to another --output") if rank == 0 else contextlib.nullcontext()
    with lock:
        if rank == 0 and not resume:
            shutil.rmtree(parts, ignore_errors=True)
        parts.mkdir(parents=True, exist_ok=True)
        barrier()
        n_chunks = 0
        for i, batch in enumerate(chunks):
            n_chunks = i + 1
            part = parts / f"part-{i:07d}.arrow"
            if i % world == rank and not part.is_file():
                table = predicted(batch)
                atomic_write(part, lambda tmp: _write_ipc(tmp, table))
            bar.update(len(batch))
        bar.close()
        barrier()
        summary = Summary()
        if rank == 0:
            def join(tmp: Path) -> None:
                writer = None
                for i in range(n_chunks):
                    with pa.memory_map(str(parts / f"part-{i:07d}.arrow")) as source:
                        table = pa.ipc.open_file(source).read_all()
                    summary.add(table)
                    writer = writer or TableWriter(tmp, table.schema, kind=table_format(output))
                    for batch in table.to_batches():
                        writer.write(batch)
                writer.close()

            atomic_write(output, join)
            shutil.rmtree(parts, ignore_errors=True)
        return summary


def _write_ipc(path: Path, table: pa.Table) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
