"""A split the user gives, as chemprop takes it: a column naming each row's set, or a JSON file of row indices
(one split per seed). The model trains, validates and tests on exactly those rows, from the CLI and the bench."""
from __future__ import annotations

import csv
import json
import textwrap

import pytest

from tests.conftest import TEXTBOOK, TINY
from zoo.cli import main

SETS = [f"--set={k}={v}" for k, v in TINY.items()] + ["--set=train.epochs=2"]
SETS = [s.replace("molecule-dmpnn", "dmpnn") for s in SETS]


@pytest.fixture
def user_task(tmp_path):
    """A user's registry with a logP task that names no data set (it is trained on --data), and its table with a
    split column: every fifth row test, every fifth from the fourth val."""
    registry = tmp_path / "mine.yaml"
    registry.write_text(textwrap.dedent("""
        encoders:
          dmpnn: {type: molecule-dmpnn}
        tasks:
          logp:
            description: Crippen logP
            inputs:
              smiles: {column: smiles, encoder: dmpnn}
            fusion: {type: mean}
            head: {type: regression, targets: {logp: logp}}
            data: {split: column}
            metric: rmse
    """))
    table = tmp_path / "x.csv"
    sets = ["train", "train", "train", "Val", "test"]
    with open(table, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["smiles", "logp", "split"])
        out.writerows([s, len(s) / 10, sets[i % 5]] for i, s in enumerate(TEXTBOOK))
    return registry, table


def _train(registry, table, out, *more: str) -> int:
    return main(["--registry", str(registry), "train", "logp", "--data", str(table), "--out", str(out), *SETS, *more])


def _rows(path) -> list[int]:
    return [int(r["row"]) for r in csv.DictReader(open(path))]


def test_a_split_column_gives_exactly_its_rows_to_train_validate_and_test(user_task, tmp_path):
    registry, table = user_task
    assert _train(registry, table, tmp_path / "run") == 0
    n = len(TEXTBOOK)
    [splits] = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert splits == {"train": [i for i in range(n) if i % 5 < 3], "val": list(range(3, n, 5)),
                      "test": list(range(4, n, 5))}
    assert _rows(tmp_path / "run" / "test_predictions.csv") == list(range(4, n, 5))


def test_a_splits_file_takes_the_seeds_split_in_chemprops_two_spellings(user_task, tmp_path):
    registry, table = user_task
    given = [{"train": "0-24", "val": [25, 26, 27, 28, 29], "test": "30-33,35"},
             {"train": list(range(10, 40)), "val": "0-4"}]  # rows 5-9 in no set; no test set
    (tmp_path / "splits.json").write_text(json.dumps(given))
    assert _train(registry, table, tmp_path / "s0", "--splits-file", str(tmp_path / "splits.json")) == 0
    assert _rows(tmp_path / "s0" / "test_predictions.csv") == [30, 31, 32, 33, 35]
    assert _train(registry, table, tmp_path / "s1", "--splits-file", str(tmp_path / "splits.json"),
                  "--set=train.seed=1") == 0
    [s1] = json.loads((tmp_path / "s1" / "splits.json").read_text())
    assert s1 == {"train": list(range(10, 40)), "val": [0, 1, 2, 3, 4], "test": []}
    # what a run wrote is itself a splits file: the same split again
    assert _train(registry, table, tmp_path / "again", "--splits-file", str(tmp_path / "s0" / "splits.json")) == 0
    assert _rows(tmp_path / "again" / "test_predictions.csv") == [30, 31, 32, 33, 35]


@pytest.mark.parametrize("given, why", [
    ([{"train": "0-20", "val": [20, 21], "test": [22]}], "row 20 is in both 'train' and 'val'"),
    ([{"train": "0-20", "val": [21], "test": [40]}], "'test' has row 40; the table has 40 rows"),
    ([{"train": "0-20", "val": "21-x"}], "'21-x' is not a row index"),
    ({"val": [1]}, "expected a list of"),
    ([{"train": "0-20", "val": [21]}], "seed 1 takes split 1, but the file has 1"),
])
def test_a_bad_splits_file_is_one_line_naming_what_is_wrong(user_task, tmp_path, capsys, given, why):
    registry, table = user_task
    (tmp_path / "s.json").write_text(json.dumps(given))
    seed = ["--set=train.seed=1"] if "seed 1" in why else []
    assert _train(registry, table, tmp_path / "run", "--splits-file", str(tmp_path / "s.json"), *seed) == 2
    err = capsys.readouterr().err.strip()
    assert why in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_a_row_of_the_split_column_naming_no_set_is_named(user_task, tmp_path, capsys):
    registry, table = user_task
    table.write_text(table.read_text().replace("\r\n", "\n").replace(",test\n", ",tst\n", 1))
    assert _train(registry, table, tmp_path / "run") == 2
    assert "row 4: split column 'split' holds 'tst'; each row needs train, val or test" in capsys.readouterr().err
    assert _train(registry, table, tmp_path / "run", "--splits-column", "absent") == 2
    assert "no column 'absent'" in capsys.readouterr().err


def test_the_bench_scores_the_given_test_rows(user_task, tmp_path):
    registry, table = user_task
    assert main(["--registry", str(registry), "bench", "logp", "--quick", "--data", str(table),
                 "--results", str(tmp_path), *SETS]) == 0
    record = json.loads((tmp_path / "logp.json").read_text())
    assert record["split"] == "column 'split'" and record["runs"][0]["n_test"] == 8
