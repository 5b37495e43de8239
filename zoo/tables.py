"""Reading and writing user tables (CSV, Parquet, JSON Lines) in chunks through pyarrow.

CSV cells are read as text, so a column's type never depends on which chunk came first, and input columns
go back out exactly as they came in. A CSV cell that is not valid UTF-8 (Latin-1 from an old instrument) is
read with U+FFFD in place of its bad bytes, so it fails on its own row (a SMILES must be ASCII) instead of
failing the whole table; JSON Lines and Parquet are UTF-8 by definition, and a file that is not is refused.

One oversized cell fails its own row too, not the table: a CSV row longer than the reader's block is read again
with bigger blocks (up to ``MAX_BLOCK``), and JSON Lines are parsed in runs of whole lines, so the cell reaches
its encoder and meets that encoder's size limit. JSON Lines are read with one schema unified over the whole file
first, so a field that first appears late, or a column that is null at first and text later, reads like any other.
"""
from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from encoders import ZooError
from tasks import READERS

FORMATS = (".csv", ".parquet", ".jsonl")  # .csv.gz and .jsonl.gz are read too
BLOCK = 1 << 20  # bytes pyarrow reads at a time
MAX_BLOCK = 64 << 20  # a CSV row longer than this fails the table; every encoder refuses far smaller cells


def table_format(path: Path, compressed: bool = False) -> str:
    suffixes = [s.lower() for s in Path(path).suffixes]
    if compressed and suffixes[-1:] == [".gz"]:
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    if suffix not in FORMATS:
        raise ZooError(f"{path}: unsupported table format {suffix or '(none)'!r}; use {', '.join(FORMATS)}")
    return suffix


def iter_table(path: str | Path, chunk_rows: int = 4096) -> Iterator[pa.RecordBatch]:
    """Record batches of at most ``chunk_rows`` rows; a clear ZooError if the file can't be read."""
    for batch in _read_blocks(Path(path), chunk_rows):
        for start in range(0, len(batch), chunk_rows):  # CSV and JSON are read in 1 MiB blocks of any row count
            yield batch.slice(start, chunk_rows)


def _read_blocks(path: Path, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    kind = table_format(path, compressed=True)
    if not path.is_file():
        raise ZooError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ZooError(f"{path}: the file is empty")
    try:
        if kind == ".parquet":
            yield from pq.ParquetFile(path).iter_batches(batch_size=chunk_rows)
        elif kind == ".jsonl":
            yield from _jsonl_batches(path)
        else:
            yield from _csv_batches(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as err:
        raise ZooError(f"{path}: cannot read as {kind[1:]} ({str(err).splitlines()[0]})") from None


def _csv_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """A row longer than the block stops pyarrow's reader ("straddling object"): read the file again with
    blocks four times bigger, from the first row not given yet."""
    block, done = BLOCK, 0
    while True:
        try:
            header = pa_csv.open_csv(path, read_options=pa_csv.ReadOptions(block_size=block)).schema.names
            if not any(h.strip() for h in header):
                raise ZooError(f"{path}: the file has no header row")
            reader = pa_csv.open_csv(
                path,
                read_options=pa_csv.ReadOptions(block_size=block),
                convert_options=pa_csv.ConvertOptions(column_types={h: pa.binary() for h in header}),
            )
            seen = 0
            for batch in reader:
                seen += len(batch)
                if seen > done:  # past what a pass with smaller blocks gave (counted here: pyarrow's
                    # skip_rows_after_names would count blank lines too)
                    yield _as_utf8(batch.slice(len(batch) - (seen - done)))
                    done = seen
            return
        except pa.ArrowInvalid as err:
            if "straddl" not in str(err):
                raise
            if block >= MAX_BLOCK:
                raise ZooError(f"{path}: cannot read as csv (row {done:,} or a later one is over "
                               f"{MAX_BLOCK >> 20} MiB)") from None
            block *= 4


def _jsonl_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """Two passes over runs of whole lines: the first unifies their schemas, the second reads them with it.
    (pyarrow's streaming reader takes the schema from its first block and fails the table on anything new.)"""
    schema = pa.schema([])
    for first, run in _line_runs(path):
        schema = pa.unify_schemas([schema, _read_json(path, first, run).schema], promote_options="permissive")
    for first, run in _line_runs(path):
        yield from _read_json(path, first, run, schema).to_batches()


def _line_runs(path: Path) -> Iterator[tuple[int, bytes]]:
    """(number of its first line, whole lines): about a block of them at a time, more where a line is long;
    .gz is decompressed."""
    with io.BufferedReader(pa.input_stream(str(path))) as f:
        first = 1
        while lines := f.readlines(BLOCK):
            yield first, b"".join(lines)
            first += len(lines)


def _read_json(path: Path, first: int, run: bytes, schema: pa.Schema | None = None) -> pa.Table:
    try:
        return pa_json.read_json(io.BytesIO(run), read_options=pa_json.ReadOptions(block_size=len(run)),
                                 parse_options=pa_json.ParseOptions(explicit_schema=schema))
    except pa.ArrowInvalid as err:  # pyarrow counts rows from the start of the run
        raise ZooError(f"{path}: cannot read as jsonl (in the lines from {first:,} on: "
                       f"{str(err).splitlines()[0]})") from None


def _as_utf8(batch: pa.RecordBatch) -> pa.RecordBatch:
    """CSV bytes -> text: a zero-copy cast where the column is valid UTF-8, else decoded cell by cell."""
    columns = []
    for column in batch.columns:
        try:
            columns.append(column.cast(pa.string()))
        except pa.ArrowInvalid:
            columns.append(text_column([None if v is None else v.decode("utf-8", "replace") for v in column.to_pylist()]))
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


# pa.array imports pandas on its first call (0.3 s, a tenth of a small prediction's wall time), so the columns
# predict adds are built from their buffers.
def _validity(values: list) -> pa.Buffer | None:
    present = np.fromiter((v is not None for v in values), bool, len(values))
    return None if present.all() else pa.py_buffer(np.packbits(present, bitorder="little"))


def float_column(values: list[float | None]) -> pa.Array:
    """A float32 column, null where a value is None."""
    data = np.array([np.nan if v is None else v for v in values], np.float32)
    return pa.Array.from_buffers(pa.float32(), len(values), [_validity(values), pa.py_buffer(data)])


def bool_column(values: list[bool | None]) -> pa.Array:
    """A boolean column, null where a value is None."""
    data = np.packbits(np.array([bool(v) for v in values], bool), bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(values), [_validity(values), pa.py_buffer(data)])


def text_column(values: list[str | None]) -> pa.Array:
    """A string column, null where a value is None."""
    encoded = [b"" if v is None else v.encode() for v in values]
    offsets = np.zeros(len(values) + 1, np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:  # over 2 GiB of text: a large_string is not what readers expect
        raise ZooError(f"a column of {offsets[-1]:,} bytes of text is over the 2 GiB a column chunk can hold; "
                       "use a smaller --chunk-rows")
    return pa.Array.from_buffers(pa.string(), len(values), [_validity(values), pa.py_buffer(offsets.astype(np.int32)),
                                                            pa.py_buffer(b"".join(encoded))])


def read_rows(path: str | Path) -> list[dict]:
    return [row for batch in iter_table(path) for row in batch.to_pylist()]


def read_dataset(path: str | Path, reader: str = "table") -> list[dict]:
    """A task's data file: a table, or a corpus format the registry names (CoNLL, standoff JSONL, TSV)."""
    if reader == "table":
        return read_rows(path)
    if not Path(path).is_file():
        raise ZooError(f"{path}: no such file")
    try:
        return READERS[reader](path)
    except (OSError, UnicodeDecodeError, ValueError, KeyError) as err:
        raise ZooError(f"{path}: cannot read as {reader} ({str(err).splitlines()[0]})") from None


NEEDS_QUOTES = '[,"\r\n]'  # a CSV cell holding one of these must be quoted


def _for_csv(batch: pa.RecordBatch | pa.Table) -> tuple[pa.Table, str]:
    """The chunk with nested columns as JSON text, and its quoting: none where no name or text cell holds a
    delimiter, quote or line break, so numbers read as text (``-4.5``, ``1.50``) go out as they came in,
    unquoted (pyarrow quotes every string otherwise). Decided per chunk; either way the CSV reads back the same."""
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    for i, field in enumerate(table.schema):
        if pa.types.is_nested(field.type):
            text = [None if v is None else json.dumps(v) for v in table.column(i).to_pylist()]
            table = table.set_column(i, pa.field(field.name, pa.string()), text_column(text))
    special = any(re.search(NEEDS_QUOTES, name) for name in table.schema.names) or any(
        pc.any(pc.match_substring_regex(table.column(i), NEEDS_QUOTES)).as_py()
        for i, field in enumerate(table.schema) if pa.types.is_string(field.type))
    return table, "needed" if special else "none"


class TableWriter:
    """Streams record batches to CSV, Parquet or JSON Lines; ``None`` as the path writes CSV to stdout."""

    def __init__(self, path: Path | None, schema: pa.Schema, kind: str | None = None):
        """``kind`` (".csv", ".parquet", ".jsonl") when ``path`` is a temporary name without the real suffix."""
        self.kind = kind or (table_format(path) if path else ".csv")
        self.sink = open(path, "wb") if path else sys.stdout.buffer
        if self.kind == ".parquet":
            self.writer = pq.ParquetWriter(self.sink, schema)
        else:
            self.writer = None
        self.header = True  # CSV: written with the first chunk (each chunk's column types may differ)

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if self.kind == ".csv":
            table, quoting = _for_csv(batch)
            pa_csv.write_csv(table, self.sink, pa_csv.WriteOptions(include_header=self.header, quoting_style=quoting))
            self.header = False
        elif self.writer is None:
            text = io.StringIO()
            for row in batch.to_pylist():
                text.write(json.dumps(row, default=str) + "\n")
            self.sink.write(text.getvalue().encode())
        else:
            self.writer.write(batch)  # a RecordBatch or a Table
        self.sink.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.sink is not sys.stdout.buffer:
            self.sink.close()
