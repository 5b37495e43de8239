"""Training fails early and in one line on values it cannot train with, refuses a damaged checkpoint, and supports a
split with no test set from training to prediction."""
from __future__ import annotations

import json
import math
import textwrap

import pytest

import zoo
from encoders import ZooError
from tests.conftest import TINY
from zoo.cli import main
from zoo.registry import load_registry

SETS = [f"--set={k}={v}" for k, v in TINY.items()]


def _train(csv, out, *more: str) -> int:
    return main(["train", "molecule-solubility", "--data", str(csv), "--out", str(out), *SETS, *more])


@pytest.mark.parametrize("key, value", [
    ("fusion.dim", "-1"), ("fusion.dim", "0"), ("head.hidden", "0"), ("encoders.molecule-dmpnn.hidden", "0"),
    ("encoders.molecule-dmpnn.dropout", "1.5"), ("fusion.modality_dropout", "1"), ("train.batch_size", "0"),
    ("train.lr", "nan"), ("train.lr", ".inf"), ("train.accumulate", "0"), ("train.ema", "2"), ("train.epochs", "0"),
    ("train.epochs", "-5"), ("train.seed", "-1"), ("train.weight_decay", "-0.1"), ("inputs.smiles.top_k", "0"),
    ("inputs.smiles.lr", "0"), ("inputs.smiles.lora.r", "0"), ("data.fractions", "[0.9, 0.0, 0.1]"),
    ("data.fractions", "[0.8, 0.3, 0.1]"),
])
def test_values_that_cannot_train_are_one_line_errors_naming_the_key(textbook_csv, tmp_path, capsys, key, value):
    assert _train(textbook_csv, tmp_path / "out", f"--set={key}={value}") == 2
    err = capsys.readouterr().err.strip()
    assert f"key '{key}'" in err and "\n" not in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.parametrize("where", ["encoder", "input"])
def test_a_name_with_a_dot_is_a_one_line_error_naming_task_and_key(tmp_path, where):
    encoder, column = ("my.dmpnn", "smiles") if where == "encoder" else ("my-dmpnn", "smi.les")
    path = tmp_path / "mine.yaml"
    path.write_text(textwrap.dedent(f"""
        encoders:
          {encoder}: {{type: molecule-dmpnn, hidden: 32}}
        tasks:
          logp:
            description: Crippen logP
            inputs:
              {column}: {{column: smiles, encoder: {encoder}}}
            fusion: {{type: mean, dim: 32}}
            head: {{type: regression, targets: {{logp: logp}}}}
            data: {{dataset: mine, file: logp.csv}}
            metric: mae
    """))
    with pytest.raises(ZooError, match=r"task 'logp': key '(encoders|inputs)': '(my\.dmpnn|smi\.les)' cannot name") as err:
        load_registry(path)
    assert "\n" not in str(err.value)


def test_a_flipped_byte_in_a_checkpoint_is_refused_on_resume(textbook_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(textbook_csv, out, "--set=train.epochs=2") == 0
    checkpoint = out / "checkpoint.pt"
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0x01
    checkpoint.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoint.pt: sha256 does not match" in err and "\n" not in err


def test_an_intact_checkpoint_still_resumes(textbook_csv, tmp_path):
    out = tmp_path / "run"
    assert _train(textbook_csv, out, "--set=train.epochs=2") == 0
    assert main(["train", "--resume", str(out)]) == 0


def test_a_split_with_no_test_set_trains_saves_describes_and_predicts(textbook_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(textbook_csv, out, "--set=train.epochs=2", "--set=data.fractions=[0.9, 0.1, 0.0]") == 0
    assert "no test set" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_test"] == 0 and "test" not in metrics
    assert metrics["n_train"] + metrics["n_val"] == 40  # no row left unused
    assert "no test set" in (out / "card.md").read_text()
    [pred] = zoo.load(out).predict([{"smiles": "CCO"}])
    assert math.isfinite(pred["logS"])


def test_a_benchmark_of_a_split_with_no_test_set_is_refused_before_training(textbook_csv, tmp_path, capsys):
    assert main(["bench", "molecule-solubility", "--quick", "--data", str(textbook_csv), "--results",
                 str(tmp_path), "--set", "data.fractions=[0.9, 0.1, 0.0]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "leave no test set" in err and "\n" not in err


def test_a_run_refused_early_leaves_no_half_begun_out_folder(textbook_csv, tmp_path, capsys):
    out, kept = tmp_path / "new", tmp_path / "existing"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    for folder in (out, kept):
        assert _train(textbook_csv, folder, "--set=head.targets.logS=absent") == 2
        assert "no column 'absent'" in capsys.readouterr().err
    assert not out.exists()  # made by the run, so removed with it
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]  # the user's folder: only what the run wrote goes


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(textbook_csv, tmp_path):
    done, killed = tmp_path / "done", tmp_path / "killed"
    assert _train(textbook_csv, done, "--set=train.epochs=2") == 0
    killed.mkdir()
    (killed / "run.yaml").write_text((done / "run.yaml").read_text())  # all a kill during featurization leaves
    assert main(["train", "--resume", str(killed)]) == 0
    first, again = (json.loads((d / "metrics.json").read_text()) for d in (done, killed))
    assert again["val"] == first["val"]


def test_wall_time_after_resume_counts_the_killed_part_and_the_resumed_part(textbook_csv, tmp_path):
    from zoo.checkpoint import load_checkpoint

    out = tmp_path / "run"
    assert _train(textbook_csv, out, "--set=train.epochs=2") == 0
    before = load_checkpoint(out)["run"]["wall_s"]  # what the first process had spent by its last checkpoint
    assert main(["train", "--resume", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < before and 0 < metrics["resumed_wall_s"]
    assert metrics["wall_s"] == pytest.approx(before + metrics["resumed_wall_s"], abs=0.02)


def test_a_user_task_trains_on_data_alone_and_info_prints_a_command_that_works(textbook_csv, tmp_path, capsys):
    registry = tmp_path / "mine.yaml"
    registry.write_text(textwrap.dedent("""
        tasks:
          logp:
            description: a user's task with no data set of its own
            inputs:
              smiles: {column: smiles, encoder: molecule-dmpnn}
            fusion: {type: mean, dim: 32}
            head: {type: regression, hidden: 32, targets: {logS: measured log solubility in mols per litre}}
            data: {split: random}
            train: {epochs: 2, batch_size: 16}
            metric: rmse
    """))
    assert main(["--registry", str(registry), "train", "logp", "--out", str(tmp_path / "no-data")]) == 2
    err = capsys.readouterr().err.strip()
    assert "names no data.dataset and data.file" in err and "--data" in err and "\n" not in err
    assert main(["--registry", str(registry), "info", "logp"]) == 0
    command = capsys.readouterr().out.splitlines()[-1].split("`")[1]
    assert command.startswith(f"zoo --registry {registry} train logp --data TABLE --out ")
    out = tmp_path / "model"
    argv = command.replace("TABLE", str(textbook_csv)).split()[1:-1] + [str(out)]
    assert main(argv) == 0 and (out / "model.safetensors").is_file()
