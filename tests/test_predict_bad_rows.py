"""`zoo predict` over a table that mixes good rows with every kind of bad row, for every registry task that has
bundled weights: exit 0, every good row predicted, every bad row's reason in its ``error`` cell.

Each task's table is built from its own inputs (columns and encoder types, read from the bundled artifact), so
a task gets covered as soon as its weights land. Cells that name files are relative to a data root holding
good files and every way a file can be bad, with a folder outside it.
"""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import yaml

from encoders import InputError
from tests.conftest import ROOT
from zoo.artifacts import BUNDLED, load
from zoo.cli import main
from zoo.registry import BUILTIN_REGISTRY
from zoo.tables import read_rows

EXAMPLES = ROOT / "examples"
TEXTS = [json.loads(line)["text"] for line in (EXAMPLES / "abstracts.jsonl").read_text().splitlines()[:2]]
TASKS = sorted(name for name in yaml.safe_load(BUILTIN_REGISTRY.read_text())["tasks"]
               if (BUNDLED / name / "config.yaml").is_file())


def _spectrum(encoder) -> str:
    axis = np.linspace(encoder.grid[0], encoder.grid[-1], 60)
    return json.dumps({"axis": axis.round(3).tolist(), "intensity": (1 + 0.2 * np.sin(axis / 50)).round(4).tolist()})


# Good cells per encoder type (a function of the encoder where they depend on its configuration).
GOOD = {
    "molecule-dmpnn": ["CCO", "CC(=O)Nc1ccc(O)cc1"],
    "composition": ["NaCl", "SrTiO3", "crystals/NaCl.cif", "crystals/SrTiO3.cif"],
    "crystal-cgcnn": ["crystals/NaCl.cif", "crystals/SrTiO3.cif"],
    "crystal-chgnet": ["crystals/NaCl.cif", "crystals/SrTiO3.cif"],
    "text-bert": TEXTS,
    "spectrum-cnn": lambda enc: [_spectrum(enc)] * 2,
    "image-timm": ["galaxies/elliptical.png", "galaxies/edge_on.png"],
    "precursor": ["181.0709 [M+H]+", '{"mz": 152.0706, "adduct": "[M+H]+", "collision_energy": 35}'],
    "molecule-mass": ["CCO", "CC(=O)Nc1ccc(O)cc1"],
}
# Bad cells per modality, with a part of the reason each must give. bytes are written raw: not UTF-8.
FILES = [("../outside/NaCl{}", "outside the data root"), ("loop{}", "cannot resolve"),
         ("truncated{}", ""), ("garbage{}", ""), ("missing{}", "no such file"), ("huge{}", "over the limit")]
BAD = {
    "molecule": [("C1CC", "cannot parse SMILES"), ("CC(C)(C)(C)C", "valence"), ("C" * 1001, "over the limit"),
                 ("NaN", "cannot parse"), (b"C\xffC", "non-ASCII")],
    "composition": [("Xx2", "Xx"), ("H1e400", "beyond floating point"), ("H-1", "negative"),
                    (b"Na\xffCl", "cannot parse formula"), ("../outside/NaCl.cif", "outside the data root"),
                    ("loop.cif", "cannot resolve")],
    "crystal": [("NaCl", "neither a structure file"), ("C" * 70, "neither a structure file")]
               + [(cell.format(".cif"), why) for cell, why in FILES],
    "text": [("word " * 300_000, "over the limit")],
    "spectrum": [("[NaN, 1, 2]", "NaN or inf"), ("[" * 50_000, "cannot parse JSON"), ("[1, 2, 3]", "wrong length"),
                 (b"[1, \xff]", "cannot parse JSON"), ('{"axis": [1, 2]}', "needs 'intensity'")]
                + [(cell.format(s), why) for s in (".npy", ".csv") for cell, why in FILES],
    "image": [(cell.format(".png"), why) for cell, why in FILES],
    "precursor": [("-5", "m/z must be"), ("181.07 [M+X]+", "unknown ion type")],
}
MODALITY = {"molecule-dmpnn": "molecule", "composition": "composition", "crystal-cgcnn": "crystal",
            "crystal-chgnet": "crystal", "text-bert": "text", "spectrum-cnn": "spectrum", "image-timm": "image",
            "precursor": "precursor"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    base = tmp_path_factory.mktemp("predict-data")
    root, outside = base / "root", base / "outside"
    shutil.copytree(EXAMPLES / "crystals", root / "crystals")
    shutil.copytree(EXAMPLES / "crystals", outside)
    if (EXAMPLES / "galaxies").is_dir():
        shutil.copytree(EXAMPLES / "galaxies", root / "galaxies")
    np.save(root / "good.npy", np.ones(10))
    for suffix in (".npy", ".csv", ".png"):  # present outside the root, so refused for where they are
        shutil.copy(root / "good.npy", outside / f"NaCl{suffix}")
    for suffix in (".cif", ".npy", ".csv", ".png"):
        (root / f"truncated{suffix}").write_bytes((EXAMPLES / "crystals" / "NaCl.cif").read_bytes()[:300]
                                                  if suffix == ".cif" else (root / "good.npy").read_bytes()[:90])
        (root / f"garbage{suffix}").write_bytes(bytes(range(128, 256)) * 8)
        (root / f"loop{suffix}").symlink_to(root / f"loop{suffix}")
        with open(root / f"huge{suffix}", "wb") as f:
            f.truncate(300 << 20)  # sparse
    return root


def _write_csv(path, rows: list[dict]) -> None:
    """Bytes cells go into the file as they are (decoded here with surrogateescape, encoded back the same way)."""
    text = [{k: v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v for k, v in r.items()}
            for r in rows]
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.DictWriter(f, fieldnames=list(text[0]))
        writer.writeheader()
        writer.writerows(text)


@pytest.mark.parametrize("task", TASKS)
def test_predict_reports_every_bad_row_and_predicts_every_good_one(task, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_DATA_ROOT", str(data_root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load(task)
    spec, head = model.spec, model.head
    by_column: dict[str, list[str]] = {}  # column -> the encoders that read it
    for inp in spec.inputs.values():
        by_column.setdefault(inp.column, []).append(inp.encoder)

    def good_cells(column: str) -> list[str]:
        """Cells every encoder reading ``column`` accepts."""
        encoders = by_column[column]
        pool = []
        for name in encoders:
            kind = spec.encoders[name].type
            assert kind in GOOD, f"no good example for encoder type {kind!r}: add some to GOOD in {__file__}"
            values = GOOD[kind]
            pool += values(model.encoders[name]) if callable(values) else values
        accepted = [v for v in pool if not any(_refusal(model.encoders[n], v) for n in encoders)]
        assert len(accepted) >= 1, f"{task}: no good cell for column {column!r}"
        return (accepted * 2)[:2]

    good = {column: good_cells(column) for column in by_column}
    rows, expected = [], []  # expected: None for a good row, else its error
    for i in range(2):
        rows.append({"id": f"good{i}", **{c: v[i] for c, v in good.items()}})
        expected.append(None)
    for column, names in by_column.items():
        for kind in dict.fromkeys(MODALITY.get(spec.encoders[n].type) for n in names):
            for cell, why in BAD.get(kind, []):
                read = cell.decode("utf-8", "replace") if isinstance(cell, bytes) else cell  # as the CSV reader does
                refusals = [err for err in map(lambda n: _refusal(model.encoders[n], read), names) if err]
                assert any(why in err.why for err in refusals), f"{task}: {cell[:80]!r} not refused for {why!r}"
                rows.append({"id": f"bad{len(rows)}", **{c: v[0] for c, v in good.items()}, column: cell})
                expected.append(f"{refusals[0].modality}: column {column!r}: {refusals[0].why}")
    rows.append({"id": "empty", **{c: "" for c in good}})
    expected.append("row: every input is empty")
    table = tmp_path / "mixed.csv"
    _write_csv(table, rows)

    args = ["predict", task, "--input", str(table), "--output", str(tmp_path / "out.csv"), "--batch-size", "8"]
    if hasattr(head, "query"):  # retrieval: rank a small candidate table
        candidate = spec.inputs[head.candidate].column
        _write_csv(tmp_path / "candidates.csv", [{candidate: v} for v in good[candidate]])
        args += ["--candidates", str(tmp_path / "candidates.csv")]
    assert main(args) == 0

    out = read_rows(tmp_path / "out.csv")
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    outputs = [name for name in out[0] if name not in rows[0] and name != "error"]
    assert outputs, f"{task}: no prediction columns in {list(out[0])}"
    for row, want in zip(out, expected):
        if want is None:
            assert row["error"] == "", f"{task} {row['id']}: {row['error']}"
            assert any(row[o] for o in outputs), f"{task} {row['id']}: nothing predicted"
        else:
            assert want in row["error"], f"{task} {row['id']}: {row['error']!r} lacks {want!r}"
            assert "\n" not in row["error"] and not any(row[o] for o in outputs)


def _refusal(encoder, cell) -> InputError | None:
    try:
        encoder.featurize(cell)
    except InputError as err:
        return err
    return None
