"""The Matbench submission file: matbench 0.6's layout, its row ids, its per-fold scores and its hash, written
as plain or gzipped JSON, and refused in one line for a task or fold it cannot stand for."""
from __future__ import annotations

import gzip
import hashlib
import json

import numpy as np
import pytest

from encoders import ZooError
from tasks.splits import matbench_split
from zoo.matbench import fill_unread, mbid, submission, write_submission

TRUTH = {0: [1.0, 2.0, 0.0], 1: [3.0, -1.0]}
FOLDS = {0: ([0, 1, 2], [1.5, 1.0, 0.25]), 1: ([3, 4], [3.0, 1.0])}


@pytest.fixture
def record():
    return submission("matbench_expt_gap", FOLDS, truth=TRUTH, parameters={"epochs": 2},
                      metadata={"algorithm": "scizoo", "seeds": np.arange(2)})


def test_shape(record):
    assert list(record) == ["@module", "@class", "version", "tasks", "user_metadata", "benchmark_name",
                            "datestamp", "hash"]
    assert (record["@module"], record["@class"], record["version"]) == ("matbench.bench", "MatbenchBenchmark", "0.6")
    assert record["benchmark_name"] == "matbench_v0.1"
    assert record["user_metadata"] == {"algorithm": "scizoo", "seeds": [0, 1]}
    task = record["tasks"]["matbench_expt_gap"]
    assert list(task) == ["@class", "@module", "benchmark_name", "dataset_name", "results"]
    assert (task["@module"], task["@class"], task["dataset_name"]) == ("matbench.task", "MatbenchTask",
                                                                     "matbench_expt_gap")
    assert list(task["results"]) == ["fold_0", "fold_1"]
    fold = task["results"]["fold_0"]
    assert list(fold) == ["data", "parameters", "scores", "uncertainty"]
    assert fold["data"] == {"mb-expt-gap-0001": 1.5, "mb-expt-gap-0002": 1.0, "mb-expt-gap-0003": 0.25}
    assert fold["parameters"] == {"epochs": 2} and fold["uncertainty"] is None
    assert list(fold["scores"]) == ["mae", "mape", "max_error", "rmse"]


def test_ids():
    assert mbid("matbench_perovskites", 0) == "mb-perovskites-00001"
    assert mbid("matbench_perovskites", 18927) == "mb-perovskites-18928"
    assert mbid("matbench_expt_gap", 41) == "mb-expt-gap-0042"
    assert mbid("matbench_expt_gap", 4603) == "mb-expt-gap-4604"


def test_our_fold_is_matbenchs():
    """The first test ids of fold 0 in matbench 0.6's matbench_v0.1_validation.json are those of our fold-0 rows."""
    test = matbench_split([None] * 18928, (0.8, 0.1, 0.1), 0)[2]
    assert [mbid("matbench_perovskites", int(r)) for r in test[:3]] == [
        "mb-perovskites-00006", "mb-perovskites-00011", "mb-perovskites-00021"]


def test_scores_are_numpys(record):
    for fold, (_, predictions) in FOLDS.items():
        error = np.array(TRUTH[fold]) - np.array(predictions)
        got = record["tasks"]["matbench_expt_gap"]["results"][f"fold_{fold}"]["scores"]
        assert got["mae"] == pytest.approx(np.mean(np.abs(error)))
        assert got["rmse"] == pytest.approx(np.sqrt(np.mean(error ** 2)))
        assert got["max_error"] == pytest.approx(np.max(np.abs(error)))
    # fold 0's true 0.0 is left out of mape, as matbench leaves out |truth| <= 1e-5
    assert record["tasks"]["matbench_expt_gap"]["results"]["fold_0"]["scores"]["mape"] == pytest.approx(0.5)


def test_without_truth_scores_are_empty():
    record = submission("matbench_perovskites", {2: ([5], [0.1])})
    assert record["tasks"]["matbench_perovskites"]["results"]["fold_2"]["scores"] == {}


@pytest.mark.parametrize("name", ["results.json.gz", "results.json"])
def test_round_trip_keeps_record_and_hash(tmp_path, record, name):
    path = tmp_path / name
    write_submission(path, record)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = json.loads(gzip.decompress(raw) if name.endswith(".gz") else raw)
    assert back == record
    # MatbenchBenchmark.from_dict's check: sha256 of the key-sorted rest (no list here holds a dict)
    stored = back.pop("hash")
    assert hashlib.sha256(json.dumps(back, sort_keys=True).encode()).hexdigest() == stored


@pytest.mark.parametrize("task, folds, truth, says", [
    ("matbench_dielectric", FOLDS, None, "unknown Matbench task"),
    ("matbench_expt_gap", {0: ([0, 1, 2], [1.0, 2.0])}, None, "2 predictions for 3 rows"),
    ("matbench_expt_gap", {0: ([0, 1], [1.0, 2.0])}, {0: [1.0]}, "1 true values for 2 rows"),
    ("matbench_expt_gap", {5: ([0], [1.0])}, None, "numbered 0 to 4"),
    ("matbench_expt_gap", {0: ([4604], [1.0])}, None, "outside its 4604 rows"),
    ("matbench_expt_gap", {0: ([3, 3], [1.0, 1.0])}, None, "more than once"),
])
def test_refused_in_one_line(task, folds, truth, says):
    with pytest.raises(ZooError, match=says) as err:
        submission(task, folds, truth=truth)
    assert "\n" not in str(err.value)


def test_a_row_the_model_cannot_read_gets_the_dummy_and_a_note():
    """Matbench takes a fold only whole: expt_gap's corrupt formula still needs a value. It gets the fold's training
    mean, and the metadata says so; the rows the model did predict keep their values."""
    targets = [float(i % 7) for i in range(4604)]
    train, _, test = matbench_split(list(range(4604)), (0.8, 0.0, 0.2), 3)
    read = [int(r) for r in test if r != test[5]]  # the model skipped one test row
    folds, filled = fill_unread("matbench_expt_gap", {3: (read, [0.5] * len(read))}, targets)
    rows, predictions = folds[3]
    assert sorted(rows) == sorted(test.tolist())
    dummy = np.mean([targets[i] for i in train])
    assert dict(zip(rows, predictions)) == {**{r: 0.5 for r in read}, int(test[5]): pytest.approx(dummy)}
    assert list(filled) == [mbid("matbench_expt_gap", int(test[5]))]
    assert "cannot read" in filled[mbid("matbench_expt_gap", int(test[5]))]
    # a whole fold is left as it is
    assert fill_unread("matbench_expt_gap", {3: (test.tolist(), [0.5] * len(test))}, targets)[1] == {}
