"""`zoo predict` against a hostile user, round two: resuming another run's parts, oversized cells and late
JSON fields, re-predicting an output, and an output path that cannot be written. All on the bundled
molecule-solubility model, so each test takes seconds."""
from __future__ import annotations

import csv
import json
import math
import os

import pyarrow.parquet as pq
import pytest
import torch

import zoo
import zoo.predict
from encoders import ZooError
from tests.conftest import TEXTBOOK
from zoo.cli import main
from zoo.predict import predict_table

TASK = "molecule-solubility"


@pytest.fixture(scope="module")
def model():
    return zoo.load(TASK)


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _molecules(n, start=0):
    return [{"id": str(i), "smiles": TEXTBOOK[i % len(TEXTBOOK)]} for i in range(start, start + n)]


class Killed(Exception):
    """Stands for a kill: the run stops with some parts written."""


def _interrupt(monkeypatch, model, table, output, parts=2, **options):
    """Predict ``table`` into ``output`` and stop after ``parts`` parts are written, as a killed run would."""
    write, written = zoo.predict._write_ipc, []

    def write_then_die(path, part):
        if len(written) == parts:
            raise Killed
        written.append(path)
        write(path, part)

    with monkeypatch.context() as patch:
        patch.setattr(zoo.predict, "_write_ipc", write_then_die)
        with pytest.raises(Killed):
            predict_table(model, table, output, progress=False, **options)
    assert len(list(output.parent.glob(f".{output.name}.parts/part-*.arrow"))) == parts


# 1. --resume keeps only the parts of the same run.

def _other_input(table):
    _write_csv(table, _molecules(40, start=1000))  # another table under the same name


def _edited_in_place(table):
    """One molecule changed, the size and modification time kept: the hash tells."""
    stat, text = table.stat(), table.read_text()
    table.write_text(text.replace(",CCO\n", ",OCC\n", 1))
    os.utime(table, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert table.stat().st_size == stat.st_size and table.read_text() != text


def _no_record(table):
    (table.parent / ".out.csv.parts" / zoo.predict.MANIFEST).unlink()  # parts left by a zoo that wrote no record


@pytest.mark.parametrize("change, extra, differs", [
    (_other_input, [], "another input"),
    (_edited_in_place, [], "another input"),
    (None, ["--chunk-rows", "6"], "another chunk_rows"),
    (_no_record, [], "no record of the run"),
])
def test_resume_refuses_the_parts_of_another_run(model, tmp_path, monkeypatch, capsys, change, extra, differs):
    table, out = _write_csv(tmp_path / "in.csv", _molecules(40)), tmp_path / "out.csv"
    _interrupt(monkeypatch, model, table, out, chunk_rows=4)
    if change:
        change(table)
    run = lambda *more: main(["predict", TASK, "--input", str(table), "--output", str(out), "--chunk-rows", "4",
                              *extra, *more])
    assert run("--resume") == 2
    err = capsys.readouterr().err.strip()
    assert differs in err and "rerun without --resume to start over" in err and "\n" not in err, err
    assert not out.exists() and (tmp_path / ".out.csv.parts").is_dir()  # nothing mixed, nothing lost
    assert run() == 0  # without --resume: starts over
    assert [r["id"] for r in _read_csv(out)] == [r["id"] for r in _read_csv(table)]


def test_resume_refuses_the_parts_of_another_model(model, tmp_path, monkeypatch):
    table, out = _write_csv(tmp_path / "in.csv", _molecules(40)), tmp_path / "out.csv"
    _interrupt(monkeypatch, model, table, out, chunk_rows=4)
    other = zoo.load(TASK)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    with pytest.raises(ZooError, match="another model; rerun without --resume"):
        predict_table(other, table, out, chunk_rows=4, progress=False, resume=True)


def test_resume_of_the_same_run_keeps_its_parts(model, tmp_path, monkeypatch):
    table, out = _write_csv(tmp_path / "in.csv", _molecules(40)), tmp_path / "out.csv"
    assert main(["predict", TASK, "--input", str(table), "--output", str(tmp_path / "clean.csv"),
                 "--chunk-rows", "4"]) == 0
    _interrupt(monkeypatch, model, table, out, parts=3, chunk_rows=4)
    write, written = zoo.predict._write_ipc, []

    def counted(path, part):
        written.append(path)
        write(path, part)

    monkeypatch.setattr(zoo.predict, "_write_ipc", counted)
    assert main(["predict", TASK, "--input", str(table), "--output", str(out), "--chunk-rows", "4", "--resume"]) == 0
    assert len(written) == 10 - 3 and out.read_bytes() == (tmp_path / "clean.csv").read_bytes()


def test_resume_refuses_other_candidates_or_top(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    retrieval = zoo.load("molecule-text-retrieval")
    queries = _write_csv(tmp_path / "queries.csv", [{"description": f"a small alcohol, number {i}"} for i in range(8)])
    candidates = _write_csv(tmp_path / "candidates.csv", [{"SMILES": s} for s in TEXTBOOK[:6]])
    out = tmp_path / "out.csv"
    _interrupt(monkeypatch, retrieval, queries, out, chunk_rows=2, candidates=candidates, top=3)
    with pytest.raises(ZooError, match="another top; rerun"):
        predict_table(retrieval, queries, out, chunk_rows=2, candidates=candidates, top=5, resume=True,
                      progress=False)
    _write_csv(candidates, [{"SMILES": s} for s in TEXTBOOK[6:12]])
    with pytest.raises(ZooError, match="another candidates; rerun"):
        predict_table(retrieval, queries, out, chunk_rows=2, candidates=candidates, top=3, resume=True,
                      progress=False)


# 3. One oversized cell or a late JSON field fails its own row at most, never the table.

PAD = "x" * 10_000  # a filler column: a few hundred rows span several of the reader's 1 MiB blocks
BIG = "C" * (3 << 20)  # a 3 MiB SMILES: longer than a block


def test_a_3_mib_csv_cell_fails_only_its_row(tmp_path, capsys):
    rows = [{**r, "pad": PAD} for r in _molecules(300)]
    rows[150]["smiles"] = BIG
    lines = ["id,smiles,pad"] + [f"{r['id']},{r['smiles']},{r['pad']}" for r in rows]
    lines[40:40] = ["", ""]  # blank lines before the big row: rows are counted as read, not as lines
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    assert main(["predict", TASK, "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.parquet"),
                 "--chunk-rows", "64"]) == 0
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["id"] for r in out] == [str(i) for i in range(300)]
    assert out[150]["error"] == "molecule: column 'smiles': SMILES of 3,145,728 characters is over the limit of 20,000"
    assert out[150]["smiles"] == BIG and out[150]["logS"] is None
    assert all(r["error"] is None and math.isfinite(r["logS"]) for r in out[:150] + out[151:])
    assert "predicted 299 of 300 rows; 1 failed" in capsys.readouterr().err


def test_a_row_over_the_largest_block_fails_the_table_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("zoo.tables.MAX_BLOCK", 4 << 20)
    _write_csv(tmp_path / "in.csv", [*_molecules(10), {"id": "10", "smiles": "C" * (9 << 20)}, *_molecules(10, 11)])

    assert main(["predict", TASK, "--input", str(tmp_path / "in.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("cannot read as csv (row 10 or a later one is over 4 MiB)") and "\n" not in err, err


def test_jsonl_fields_that_appear_late_or_turn_from_null_to_text(tmp_path):
    rows = [{**r, "pad": PAD, "note": None} for r in _molecules(300)]
    for r in rows[200:]:  # after the first two blocks
        r.update(source=f"lab {r['id']}", note="checked")
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["predict", TASK, "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl"),
                 "--chunk-rows", "64"]) == 0
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in out] == [str(i) for i in range(300)]
    assert all(r["error"] is None and math.isfinite(r["logS"]) for r in out)
    assert [r["source"] for r in out[199:201]] == [None, "lab 200"]
    assert [r["note"] for r in out[199:201]] == [None, "checked"]


@pytest.mark.parametrize("where, expected", [  # rows from ``where`` on are text; a run of lines here is 105 rows
    (200, "in the lines from 106 on: JSON parse error: Column(/batch) changed from number to string in row 95"),
    (105, "Unable to merge: Field batch has incompatible types: int64 vs string"),  # between two runs
])
def test_a_jsonl_column_of_two_types_fails_the_table_with_one_line(tmp_path, capsys, where, expected):
    rows = [{"smiles": "CCO", "pad": PAD, "batch": 7} for _ in range(300)]
    for row in rows[where:]:
        row["batch"] = "B7"
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["predict", TASK, "--input", str(tmp_path / "in.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot read as jsonl" in err and expected in err and "\n" not in err, err


# 4. An output (or any table with output-named columns) can be predicted again.

def test_a_predicted_table_can_be_predicted_again(tmp_path):
    _write_csv(tmp_path / "in.csv", [{"smiles": "CCO"}, {"smiles": "C1CC"}, {"smiles": "c1ccccc1"}])
    for src, dst in (("in", "once"), ("once", "twice"), ("twice", "thrice")):
        assert main(["predict", TASK, "--input", str(tmp_path / f"{src}.csv"),
                     "--output", str(tmp_path / f"{dst}.csv")]) == 0
    rows = _read_csv(tmp_path / "thrice.csv")
    once = ["logS", "logS_sigma", "domain_score", "in_domain", "unseen_elements", "error"]
    assert list(rows[0]) == ["smiles", *once, *(f"{c}_predicted" for c in once), *(f"{c}_predicted_2" for c in once)]
    for row in rows:  # every run's columns as it wrote them, and the same prediction each time
        assert row["logS"] == row["logS_predicted"] == row["logS_predicted_2"]
        assert row["error"] == row["error_predicted"] == row["error_predicted_2"]
    assert rows[0]["error"] == "" and "cannot parse SMILES 'C1CC'" in rows[1]["error"]


def test_output_names_skip_every_input_column(model):
    names = zoo.predict._output_names(model.output_columns(), ["smiles", "logS", "logS_predicted", "error",
                                                                "error_predicted_2", "in_domain"])
    assert names == {"logS": "logS_predicted_2", "domain_score": "domain_score", "in_domain": "in_domain_predicted",
                     "unseen_elements": "unseen_elements", "logS_sigma": "logS_sigma", "error": "error_predicted"}


# 11. The output path is checked before the model is loaded.

@pytest.mark.parametrize("output, expected", [
    ("out.txt", "out.txt: unsupported table format '.txt'; use .csv, .parquet, .jsonl"),
    ("folder.csv", "folder.csv: is a folder; the output must be a file"),
    ("file.csv/sub/out.csv", "is a file, not a folder"),
])
def test_an_unwritable_output_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys, output, expected):
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "file.csv").write_text("smiles\nCCO\n")
    monkeypatch.setattr("zoo.cli.load", lambda *a, **k: pytest.fail("loaded the model first"))
    table = _write_csv(tmp_path / "in.csv", _molecules(3))
    assert main(["predict", TASK, "--input", str(table), "--output", str(tmp_path / output)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zoo: error: ") and expected in err and "\n" not in err, err


def test_missing_output_folders_are_created(tmp_path):
    table = _write_csv(tmp_path / "in.csv", _molecules(3))
    assert main(["predict", TASK, "--input", str(table), "--output", str(tmp_path / "new" / "sub" / "out.csv")]) == 0
    assert len(_read_csv(tmp_path / "new" / "sub" / "out.csv")) == 3
