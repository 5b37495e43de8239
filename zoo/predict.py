"""Batch inference over a table: streamed in chunks, each row's prediction written beside its input columns.

A row that cannot be featurized gets its reason in the ``error`` column and no prediction; the others run.
Each output (and ``error``) is a column of its own name, or, where the input already has a column of that name
(a table predicted before), the first of ``<name>_predicted``, ``<name>_predicted_2``, ... it does not have:
input columns go back out exactly as they came in.
The output file appears only when complete (written under a temporary name, then renamed); its path is checked
before any work.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from encoders import ZooError
from zoo.artifacts import atomic_write, atomic_write_text, exclusive
from zoo.distributed import barrier, rank_and_world
from zoo.model import Prepared, ZooModel, resolve_workers
from zoo.tables import BLOCK, TableWriter, bool_column, float_column, iter_table, read_rows, table_format, text_column

MANIFEST = "manifest.json"  # in the parts folder: what the run that made the parts predicted, for --resume


@dataclass
class Summary:
    rows: int = 0
    n_failed: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)  # (row number, reason) of the first few

    def add(self, errors: pa.ChunkedArray) -> None:
        """Count a predicted chunk's rows from its error column and note the first few failures."""
        for offset, why in enumerate(errors.to_pylist()):
            if why is not None:
                self.n_failed += 1
                if len(self.failed) < 5:
                    self.failed.append((self.rows + offset, why))
        self.rows += len(errors)

    def line(self) -> str:
        shown = "; ".join(f"row {i}: {why}" for i, why in self.failed)
        more = " ..." if self.n_failed > len(self.failed) else ""
        return f"predicted {self.rows - self.n_failed} of {self.rows} rows; {self.n_failed} failed" + (
            f" ({shown}{more})" if self.n_failed else "")


def _output_names(outputs: dict[str, str], columns: list[str]) -> dict[str, str]:
    """Column per output and for ``error``: the first of its name, ``<name>_predicted``, ``<name>_predicted_2``,
    ... that no input column and no other output has."""
    taken, names = set(columns), {}
    for output in [*outputs, "error"]:
        tries = itertools.chain([output, f"{output}_predicted"],
                                (f"{output}_predicted_{n}" for n in itertools.count(2)))
        names[output] = next(name for name in tries if name not in taken)
        taken.add(names[output])
    return names


def check_output(output: str | Path) -> Path:
    """Refuse, before any work, an output the finished table could not be written to."""
    output = Path(output)
    table_format(output)
    if output.is_dir():
        raise ZooError(f"{output}: is a folder; the output must be a file")
    above = next(p for p in output.resolve().parents if p.exists())  # missing folders are created
    if not above.is_dir():
        raise ZooError(f"{output}: cannot be written: {above} is a file, not a folder")
    return output


def _check_columns(model: ZooModel, schema: pa.Schema, path: Path) -> None:
    wanted = [i.column for i in model.spec.inputs.values()]
    if not set(wanted) & set(schema.names):
        raise ZooError(f"{path}: no column {' or '.join(repr(c) for c in wanted)} needed by task "
                       f"{model.spec.name!r} (columns: {', '.join(schema.names) or 'none'})")


def _output_columns(outputs: dict[str, str], results: list[dict], names: dict[str, str]) -> dict[str, pa.Array]:
    """The outputs as columns: numbers as float32, flags as booleans, text as it is, anything else (entity lists,
    ranked matches) as JSON text."""
    def cell(value):
        return value if value is None or isinstance(value, str) else json.dumps(value)

    column = {"float": float_column, "bool": bool_column}
    return {names[k]: column[kind]([r.get(k) for r in results]) if kind in column
            else text_column([cell(r.get(k)) for r in results]) for k, kind in outputs.items()}


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
                                           "score": round(float(row_scores[j]), 4)} for r, j in enumerate(order)],
                              # how far the best stands above the next: a small margin is a near tie
                              "margin": float(np.diff(np.partition(row_scores, -2)[-2:])[0]) if len(usable) > 1 else None}
        return results

    return rank


def _fingerprint(path: Path) -> dict:
    """A file's size, modification time and a hash of its first and last block: cheap at any size, and
    another file or an edit in place shows."""
    size, digest = path.stat().st_size, hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(BLOCK))
        f.seek(max(size - BLOCK, 0))
        digest.update(f.read(BLOCK))
    return {"size": size, "mtime_ns": path.stat().st_mtime_ns, "sha256_ends": digest.hexdigest()}


def _model_sha256(model: ZooModel) -> str:
    """A hash of the model's entry and every tensor it holds (a model trained in this process has no file)."""
    digest = hashlib.sha256(json.dumps(model.spec.model_dump(mode="json"), sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _open_parts(parts: Path, run: dict, resume: bool, rank: int) -> None:
    """Start the parts folder with a record of what this run predicts; resuming, refuse parts another run
    made (another input, chunk size, model or candidates): joined, they would mix two runs' rows."""
    if rank == 0:
        if not resume:
            shutil.rmtree(parts, ignore_errors=True)
        parts.mkdir(parents=True, exist_ok=True)
        if not (parts / MANIFEST).is_file() and not any(parts.glob("part-*")):
            atomic_write_text(parts / MANIFEST, json.dumps(run))
    barrier()
    if not (parts / MANIFEST).is_file():
        raise ZooError(f"cannot resume: {parts} holds parts with no record of the run that made them; "
                       "rerun without --resume to start over")
    made = json.loads((parts / MANIFEST).read_text())
    if made != run:
        differ = ", ".join(key for key in run if made.get(key) != run[key])
        raise ZooError(f"cannot resume: the parts in {parts} were predicted with another {differ}; "
                       "rerun without --resume to start over")


@dataclass(frozen=True)
class TableChunks:
    """The chunks of a table that this process predicts: every ``world``-th from ``rank``, less those ``done``
    (their parts are there from an interrupted run). A ``ChunkSource``: each worker reads the file itself."""

    path: Path
    chunk_rows: int
    rank: int = 0
    world: int = 1
    done: frozenset[int] = frozenset()

    def wanted(self, chunk: int) -> bool:
        return chunk % self.world == self.rank and chunk not in self.done

    def __iter__(self):
        for chunk, batch in enumerate(iter_table(self.path, self.chunk_rows)):
            if self.wanted(chunk):
                yield chunk, batch.to_pylist()


def predict_table(model: ZooModel, path: str | Path, output: str | Path | None = None, chunk_rows: int = 4096,
                  batch_size: int = 256, progress: bool = True, candidates: str | Path | None = None,
                  top: int = 10, resume: bool = False, workers: int | str = 0, interval: float | None = None) -> Summary:
    """Predict every row of a table; for a retrieval task, rank the rows of ``candidates`` for each row. With a
    trust summary, rows get sigma and domain columns, and with ``interval`` (a coverage) conformal intervals.

    ``workers`` processes (``auto``: one per core) featurize and collate the next chunks while the model runs
    this one (``Inference.prepared``), and a thread writes each chunk out, so neither waits on the model.
    With an output file, each chunk of rows is first written as its own part (Arrow IPC, atomically) in
    ``.<output>.parts/``, and the parts are joined in input order at the end: ``resume`` keeps the parts
    an interrupted run of the same input, chunk size, model and candidates finished (and refuses another
    run's), and under torchrun each rank predicts every world-th chunk.
    """
    path = Path(path)
    if output is not None:
        output = check_output(output)
    if model.head.ranks and candidates is None:
        raise ZooError(f"task {model.spec.name!r} ranks candidates: give --candidates TABLE "
                       f"(with column {model.spec.inputs[model.head.candidate].column!r})")
    workers = resolve_workers(workers)
    if interval is not None and model.trust:
        model.trust.quantile(interval)  # a coverage it cannot give fails before any row is read
    outputs = model.output_columns(interval)
    rank_rows = _rank(model, Path(candidates), top, batch_size) if candidates else None
    batches = iter_table(path, chunk_rows)
    first = next(batches, None)
    if first is None:
        raise ZooError(f"{path}: the table has no rows")
    _check_columns(model, first.schema, path)
    names = _output_names(outputs, first.schema.names)

    def predicted(stream: Iterator[Prepared] | None, chunk: int, batch: pa.RecordBatch) -> pa.Table:
        if stream is None:
            results = rank_rows(batch.to_pylist())
        else:
            prepared = next(stream)
            assert prepared.chunk == chunk, (prepared.chunk, chunk)  # the workers' chunks come back in order
            results = model.describe(prepared, interval)
        columns = _output_columns(outputs, results, names)
        columns[names["error"]] = text_column([r.get("error") for r in results])
        table = pa.Table.from_batches([batch])
        for name, values in columns.items():
            table = table.append_column(name, values)
        return table

    chunks = itertools.chain([first], batches)
    bar = tqdm(desc=f"predict {model.spec.name}", unit="row", disable=None if progress else True)
    if output is None:  # stdout: stream as we go
        summary, writer = Summary(), None
        stream = None if candidates else model.prepared(TableChunks(path, chunk_rows), batch_size, workers)
        for i, batch in enumerate(chunks):
            table = predicted(stream, i, batch)
            summary.add(table.column(names["error"]))
            writer = writer or TableWriter(None, table.schema)
            writer.write(table)
            bar.update(len(table))
        writer.close()
        return summary

    parts = output.parent / f".{output.name}.parts"
    rank, world = rank_and_world()
    # Rank 0 holds a lock beside the output for the whole run: a second predict into it would clear or mix
    # this run's parts.
    lock = exclusive(output.parent / f".{output.name}.lock", f"{output}: another zoo predict is writing it; wait "
                     "for it to finish or write to another --output") if rank == 0 else contextlib.nullcontext()
    # What decides the rows of the parts; batch size and workers do not.
    run = {"input": _fingerprint(path), "chunk_rows": chunk_rows, "model": _model_sha256(model),
           "candidates": candidates and _fingerprint(Path(candidates)), "top": top if candidates else None,
           "interval": interval}
    with lock:
        _open_parts(parts, run, resume, rank)
        source = TableChunks(path, chunk_rows, rank, world, frozenset(int(p.stem[5:]) for p in parts.glob("part-*.arrow")))
        stream = None if candidates else model.prepared(source, batch_size, workers)
        n_chunks, written = 0, None
        with ThreadPoolExecutor(1) as writer:  # a part is written while the model runs the next chunk
            for i, batch in enumerate(chunks):
                n_chunks = i + 1
                if source.wanted(i):
                    table = predicted(stream, i, batch)
                    if written is not None:
                        written.result()  # one part in flight at a time, and its error raised here
                    written = writer.submit(atomic_write, parts / f"part-{i:07d}.arrow",
                                            lambda tmp, table=table: _write_ipc(tmp, table))
                bar.update(len(batch))
            if written is not None:
                written.result()
        bar.close()
        barrier()
        summary = Summary()
        if rank == 0:
            def join(tmp: Path) -> None:
                writer = None
                for i in range(n_chunks):
                    with pa.memory_map(str(parts / f"part-{i:07d}.arrow")) as source:
                        table = pa.ipc.open_file(source).read_all()
                    summary.add(table.column(names["error"]))
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
