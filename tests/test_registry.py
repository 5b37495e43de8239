import textwrap

import pytest

import zoo
from encoders import ZooError
from zoo.model import ZooModel
from zoo.registry import load_registry, parse_overrides


def _user_registry(tmp_path, text: str):
    path = tmp_path / "mine.yaml"
    path.write_text(textwrap.dedent(text))
    return path


GOOD_TASK = """
    tasks:
      logp:
        description: Crippen logP from SMILES
        inputs:
          smiles: {column: smiles, encoder: molecule-dmpnn}
        fusion: {type: mean, dim: 64}
        head: {type: regression, targets: {logp: logp}}
        data: {dataset: mine, file: logp.csv}
        metric: mae
"""


def test_builtin_registry_lists_and_describes_the_core_task():
    assert "molecule-solubility" in zoo.list_tasks()
    spec = zoo.info("molecule-solubility")
    assert spec.metric == "rmse" and spec.data.split == "random"
    assert spec.encoders["molecule-dmpnn"].type == "molecule-dmpnn"
    assert spec.references["D-MPNN"].value == pytest.approx(0.555)


def test_a_key_the_chosen_fusion_does_not_take_is_refused():
    with pytest.raises(ZooError, match="key 'fusion.latents': unknown key"):
        zoo.info("molecule-solubility", overrides={"fusion.type": "mean", "fusion.latents": 4})


def test_a_new_task_over_existing_encoders_is_yaml_only(tmp_path):
    path = _user_registry(tmp_path, GOOD_TASK)
    assert {"logp", "molecule-solubility"} <= set(zoo.list_tasks(path))
    spec = zoo.info("logp", path)
    model = ZooModel(spec)
    assert model.predict([{"smiles": "CCO"}])[0].keys() == {"logp"}


def test_overrides_apply_dotted_keys_with_yaml_values():
    spec = zoo.info("molecule-solubility", overrides=parse_overrides(["train.epochs=3", "fusion={type: mean, dim: 64}",
                                                                     "data.fractions=[0.7, 0.2, 0.1]"]))
    assert spec.train.epochs == 3 and spec.fusion.type == "mean" and spec.data.fractions == (0.7, 0.2, 0.1)


@pytest.mark.parametrize("change, expected", [
    ("encoder: molecule-dmpnn}", "'inputs.smiles.encoder': unknown encoder 'nope'"),
    ("fusion: {type: mean, dim: 64}", "key 'fusion.dim': Input should be a valid integer"),
    ("head: {type: regression, targets: {logp: logp}}", "key 'head.type': unknown type 'ridge'"),
    ("metric: mae", "key 'metric': missing required key"),
    ("data: {dataset: mine, file: logp.csv}", "key 'data.colour': unknown key"),
])
def test_malformed_entries_fail_on_load_with_task_key_and_why(tmp_path, change, expected):
    broken = {
        "encoder: molecule-dmpnn}": "encoder: nope}",
        "fusion: {type: mean, dim: 64}": "fusion: {type: mean, dim: big}",
        "head: {type: regression, targets: {logp: logp}}": "head: {type: ridge, targets: {logp: logp}}",
        "metric: mae": "",
        "data: {dataset: mine, file: logp.csv}": "data: {dataset: mine, file: logp.csv, colour: red}",
    }[change]
    path = _user_registry(tmp_path, GOOD_TASK.replace(change, broken))
    with pytest.raises(ZooError) as err:
        load_registry(path)
    message = str(err.value)
    assert "task 'logp'" in message and expected in message and "\n" not in message


def test_unknown_encoder_parameter_is_named(tmp_path):
    path = _user_registry(tmp_path, GOOD_TASK + "    encoders:\n      molecule-dmpnn: {type: molecule-dmpnn, hiden: 3}\n")
    with pytest.raises(ZooError, match="key 'encoders.molecule-dmpnn.hiden': unknown key"):
        load_registry(path)


def test_unknown_task_bad_override_and_bad_yaml_are_one_line_errors(tmp_path):
    with pytest.raises(ZooError, match="unknown task 'nope'; known: .*molecule-solubility"):
        zoo.info("nope")
    with pytest.raises(ZooError, match="key 'train.epoch': unknown key"):
        zoo.info("molecule-solubility", overrides={"train.epoch": 3})
    with pytest.raises(ZooError, match="expected key=value"):
        parse_overrides(["train.epochs"])
    with pytest.raises(ZooError, match="not valid YAML"):
        load_registry(_user_registry(tmp_path, "tasks: [unclosed\n"))
