import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import zoo
from zoo.cli import main
from tests.conftest import ROOT, TEXTBOOK, TINY

GOOD = ["CCO", "c1ccccc1", "CC(=O)Nc1ccc(O)cc1"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    rows = [{"smiles": s, "measured log solubility in mols per litre": float(len(s))} for s in TEXTBOOK]
    zoo.train("molecule-solubility", rows, out=out, progress=False, overrides={**TINY, "train.epochs": 1})
    return out


def _mixed_rows():
    return [{"id": "1", "smiles": "CCO"}, {"id": "2", "smiles": "C1CC"}, {"id": "3", "smiles": ""},
            {"id": "4", "smiles": "c1ccccc1"}, {"id": "5", "smiles": "CC(C)(C)(C)C"},
            {"id": "6", "smiles": "CC(=O)Nc1ccc(O)cc1"}]


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _check_mixed(out_rows):
    assert [r["id"] for r in out_rows] == ["1", "2", "3", "4", "5", "6"]
    for r in out_rows:
        good = r["id"] in ("1", "4", "6")
        assert (r["error"] in (None, "")) == good
        if good:
            assert math.isfinite(float(r["logS"]))
        else:
            assert r["logS"] in (None, "")
    errors = {r["id"]: r["error"] for r in out_rows}
    assert "cannot parse SMILES 'C1CC'" in errors["2"]
    assert errors["3"] == "row: every input is empty ('smiles')"
    assert "valence" in errors["5"]


def test_predict_csv_keeps_good_rows_and_reports_bad_ones(model_dir, tmp_path, capsys):
    src = _write_csv(tmp_path / "in.csv", _mixed_rows())
    assert main(["predict", str(model_dir), "--input", str(src), "--output", str(tmp_path / "out.csv"),
                 "--chunk-rows", "2"]) == 0
    with open(tmp_path / "out.csv") as f:
        _check_mixed(list(csv.DictReader(f)))
    assert "predicted 3 of 6 rows; 3 failed" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv"]  # no temporary file left


def test_predict_parquet_and_jsonl(model_dir, tmp_path):
    pq.write_table(pa.Table.from_pylist(_mixed_rows()), tmp_path / "in.parquet")
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _mixed_rows()))
    assert main(["predict", str(model_dir), "--input", str(tmp_path / "in.parquet"),
                 "--output", str(tmp_path / "out.parquet")]) == 0
    _check_mixed(pq.read_table(tmp_path / "out.parquet").to_pylist())
    assert main(["predict", str(model_dir), "--input", str(tmp_path / "in.jsonl"),
                 "--output", str(tmp_path / "out.jsonl")]) == 0
    _check_mixed([json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()])


def test_a_target_named_like_an_input_column_does_not_overwrite_it(model_dir, tmp_path, capsys):
    src = _write_csv(tmp_path / "in.csv", [{"smiles": "CCO", "logS": "-0.77"}])
    assert main(["predict", str(model_dir), "--input", str(src)]) == 0
    [row] = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert row["logS"] == "-0.77" and math.isfinite(float(row["logS_predicted"]))


@pytest.mark.parametrize("content, expected", [
    ("", "the file is empty"),
    ("name,formula\nwater,H2O\n", "no column 'smiles' needed by task 'molecule-solubility'"),
    ("smiles\n", "the table has no rows"),
])
def test_unreadable_inputs_fail_with_one_line(model_dir, tmp_path, capsys, content, expected):
    (tmp_path / "in.csv").write_text(content)
    assert main(["predict", str(model_dir), "--input", str(tmp_path / "in.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err and not (tmp_path / "out.csv").exists()


def test_every_row_failing_exits_non_zero(model_dir, tmp_path, capsys):
    src = _write_csv(tmp_path / "in.csv", [{"smiles": "xx"}, {"smiles": "C1CC"}])
    assert main(["predict", str(model_dir), "--input", str(src)]) == 1
    assert "predicted 0 of 2 rows; 2 failed" in capsys.readouterr().err


def test_unknown_task_and_missing_file(model_dir, capsys, tmp_path):
    assert main(["predict", "no-such-task", "--input", str(tmp_path / "x.csv")]) == 2
    assert "unknown task 'no-such-task'" in capsys.readouterr().err
    assert main(["predict", str(model_dir), "--input", str(tmp_path / "x.csv")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_readme_main_job_uses_bundled_weights_offline(tmp_path):
    """README command (a): the bundled model predicts examples/molecules.csv with no network, no shared data."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ZOO_HOME": str(tmp_path / "empty-store")}
    env.pop("ZOO_DATA", None)
    done = subprocess.run([sys.executable, "-m", "zoo", "predict", "molecule-solubility",
                           "--input", str(ROOT / "examples" / "molecules.csv")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(done.stdout.splitlines()))
    assert len(rows) == 13 and all(math.isfinite(float(r["logS"])) for r in rows)
    by_name = {r["name"]: float(r["logS"]) for r in rows}
    # Chemistry a model trained on ESOL must get right: ethanol dissolves, hexachlorobenzene does not.
    assert by_name["ethanol"] > by_name["naphthalene"] > by_name["hexachlorobenzene"]


def test_a_killed_predict_resumes_to_the_same_output(model_dir, tmp_path):
    rows = [{"id": str(i), "smiles": TEXTBOOK[i % len(TEXTBOOK)] if i % 97 else "C1CC"} for i in range(30000)]
    table = _write_csv(tmp_path / "big.csv", rows)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = lambda out, *extra: subprocess.Popen(
        [sys.executable, "-m", "zoo", "predict", str(model_dir), "--input", str(table), "--output", str(out),
         "--chunk-rows", "500", *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert run(tmp_path / "clean.csv").wait(timeout=300) == 0
    killed = run(tmp_path / "out.csv")
    parts = tmp_path / ".out.csv.parts"
    while killed.poll() is None and len(list(parts.glob("part-*.arrow"))) < 10:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL and not (tmp_path / "out.csv").exists()
    done = len(list(parts.glob("part-*.arrow")))
    assert 10 <= done < 60  # stopped halfway: the rerun has real work left
    assert run(tmp_path / "out.csv", "--resume").wait(timeout=300) == 0
    assert (tmp_path / "out.csv").read_bytes() == (tmp_path / "clean.csv").read_bytes()
    assert not parts.exists()


def test_csv_output_writes_list_cells_as_json_text(model_dir, tmp_path):
    table = tmp_path / "in.jsonl"
    table.write_text('{"smiles": "CCO", "tags": ["a", "b"]}\n{"smiles": "c1ccccc1", "tags": []}\n')
    assert main(["predict", str(model_dir), "--input", str(table), "--output", str(tmp_path / "out.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [json.loads(r["tags"]) for r in rows] == [["a", "b"], []] and all(r["logS"] for r in rows)


def test_featurizing_in_worker_processes_gives_the_same_predictions(model_dir):
    model = zoo.load(model_dir)
    rows = [{"smiles": s} for s in [*TEXTBOOK, "C1CC", "", *reversed(TEXTBOOK)]]
    assert model.predict(rows, batch_size=7, workers=2) == model.predict(rows, batch_size=7)


def test_numbers_in_a_csv_go_out_as_they_came_in(tmp_path):
    """A CSV's cells are read as text (so no chunk decides a column's type), and written back unquoted where
    nothing in the chunk needs quotes: "-0.77" and "1.50" stay numbers to the next reader, character for character."""
    table = tmp_path / "typed.csv"
    table.write_text("name,smiles,measured,id\nethanol,CCO,-0.77,007\nwater,O,1.50,9\n")
    out = tmp_path / "out.csv"
    assert main(["predict", "molecule-solubility", "--input", str(table), "--output", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert next(csv.reader(lines[:1])) == ["name", "smiles", "measured", "id", "logS", "logS_sigma", "domain_score",
                                           "in_domain", "unseen_elements", "error"]
    assert lines[1].startswith("ethanol,CCO,-0.77,007,") and lines[2].startswith("water,O,1.50,9,")
    noted = tmp_path / "noted.csv"  # a cell that needs quotes: the chunk is quoted, and reads back the same
    noted.write_text('name,smiles,note\nethanol,CCO,"a, b"\nwater,O,"say ""hi"""\n')
    assert main(["predict", "molecule-solubility", "--input", str(noted), "--output", str(out)]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["note"] for r in rows] == ["a, b", 'say "hi"'] and rows[0]["name"] == "ethanol"
