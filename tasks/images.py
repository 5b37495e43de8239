"""Image data sets stored as a CSV of labels beside a folder of images (Galaxy Zoo's ``labels.csv`` +
``images/``): the ``image`` column names each file relative to the CSV, so it is resolved here, from the CSV's
folder, and the rows work from any working directory."""
from __future__ import annotations

import csv
from pathlib import Path


def read_image_table(path: str | Path, column: str = "image") -> list[dict]:
    """Rows of the CSV at ``path`` as text, with each relative ``column`` path made absolute from its folder
    (an empty cell stays empty: a row without an image)."""
    folder = Path(path).resolve().parent
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and column not in rows[0]:
        raise KeyError(f"no {column!r} column (columns: {', '.join(rows[0])})")
    for row in rows:
        if row[column] and row[column].strip():
            row[column] = str(folder / row[column].strip())
    return rows
