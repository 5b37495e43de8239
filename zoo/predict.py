"""Batch inference over a table: streamed in chunks, each row's prediction written beside its input columns.

A row that cannot be featurized gets its reason in the ``error`` column and no prediction; the others run.
The output file appears only when complete (written under a temporary name, then renamed).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from tqdm.auto import tqdm

from encoders import ZooError
from zoo.artifacts import atomic_write
from zoo.model import ZooModel
from zoo.tables import TableWriter, iter_table


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


def predict_table(model: ZooModel, path: str | Path, output: str | Path | None = None, chunk_rows: int = 4096,
                  batch_size: int = 256, progress: bool = True) -> Summary:
    path = Path(path)
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
            results = model.predict(batch.to_pylist(), batch_size=batch_size)
            for offset, r in enumerate(results):
                if "error" in r:
                    summary.n_failed += 1
                    if len(summary.failed) < 5:
                        summary.failed.append((summary.rows + offset, r["error"]))
            summary.rows += len(results)
            columns = {names[t]: pa.array([r.get(t) for r in results], pa.float32()) for t in names}
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
