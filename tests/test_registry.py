import textwrap

import pytest

import zoo
from encoders import ZooError
from zoo.cli import main
from zoo.model import ZooModel
from zoo.registry import Component, load_registry, parse_overrides


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


# ---- strict --set: a key that names nothing in the task entry is refused, naming what is there ----

def _refused(task, overrides, *expected, registry=None):
    with pytest.raises(ZooError) as err:
        load_registry(registry).task(task, overrides)
    message = str(err.value)
    assert "\n" not in message and all(part in message for part in expected), message


def test_an_override_of_an_encoder_the_task_does_not_have_is_refused_with_its_encoders():
    _refused("materials-property", {"encoders.nonexistent.dim": 3},
             "key 'encoders.nonexistent.dim': no encoder 'nonexistent' in this task",
             "known at 'encoders': composition, crystal-chgnet")
    # in the registry, but not what this task's inputs use (materials-bandgap reads composition-chgnet)
    _refused("materials-bandgap", {"encoders.composition.dim": 16}, "no encoder 'composition'",
             "known at 'encoders': composition-chgnet")


def test_unknown_sections_inputs_and_train_or_data_keys_are_refused_with_what_exists():
    _refused("molecule-solubility", {"trian.epochs": 3}, "key 'trian.epochs': unknown key",
             "known at the top level: bench, data, description, encoders, fusion, head, inputs")
    _refused("molecule-solubility", {"train.epoch": 3}, "key 'train.epoch': unknown key",
             "known at 'train': ", "epochs")
    _refused("molecule-solubility", {"data.colour": "red"}, "key 'data.colour': unknown key",
             "known at 'data': ", "fractions")
    _refused("molecule-solubility", {"inputs.smile.column": "s"}, "no input 'smile' in this task",
             "known at 'inputs': smiles")
    _refused("materials-property", {"fusion.latent": 4}, "key 'fusion.latent': unknown key",
             "known at 'fusion' (cross-attention): ", "latents")
    _refused("molecule-solubility", {"head.hiden": 4}, "known at 'head' (regression): ", "hidden")
    _refused("molecule-solubility", {"train.epochs.max": 4}, "'train.epochs' is", "not a mapping")
    _refused("molecule-solubility", {"data.files.x": "y"}, "key 'data.files.x'", "'datasets' declaration")


def test_an_encoder_defined_whole_must_be_used_by_an_input():
    small = {"type": "molecule-dmpnn", "hidden": 8}
    _refused("molecule-solubility", {"encoders.small": small}, "key 'encoders.small': no input uses encoder 'small'",
             "the inputs use: molecule-dmpnn")
    for overrides in ({"encoders.small": small, "inputs.smiles.encoder": "small"},
                      {"inputs.smiles.encoder": "small", "encoders.small": small}):  # either order
        assert zoo.info("molecule-solubility", overrides=overrides).encoders == {"small": Component(**small)}


def test_keys_the_entry_does_not_write_but_its_types_take_are_allowed(tmp_path):
    # a constructor argument with a default, not written in the registry's encoder
    spec = zoo.info("materials-property", overrides={"encoders.crystal-chgnet.dropout": 0.2})
    assert spec.encoders["crystal-chgnet"].params["dropout"] == 0.2
    path = _user_registry(tmp_path, GOOD_TASK.replace("molecule-dmpnn}", "bare}")
                          + "    encoders:\n      bare: {type: molecule-dmpnn}\n")
    spec = zoo.info("logp", path, overrides=parse_overrides(["encoders.bare.hidden=64"]))
    assert spec.encoders["bare"].params == {"hidden": 64}
    # fields of a section the entry leaves at their defaults, a new input given whole, an encoder an override
    # switched to (copied in from the registry, so a later key can set it)
    spec = zoo.info("molecule-solubility", overrides={
        "train.ema": 0.9, "inputs.smiles.lora.r": 4, "inputs.mass": {"column": "smiles", "encoder": "molecule-mass"},
        "encoders.molecule-mass.dim": 32})
    assert spec.train.ema == 0.9 and spec.inputs["smiles"].lora.r == 4 and spec.encoders["molecule-mass"].params["dim"] == 32
    spec = zoo.info("galaxy-morphology", overrides={"inputs.image.encoder": "image-vit-tiny",
                                                    "encoders.image-vit-tiny.dim": 16})
    assert set(spec.encoders) == {"image-vit-tiny"} and spec.encoders["image-vit-tiny"].params["dim"] == 16


def test_every_bench_variant_of_the_registry_is_a_valid_override():
    registry = load_registry()
    for name in registry.names():
        bench = registry.task(name).bench
        for overrides in [*bench.variants.values(), bench.quick]:
            registry.task(name, overrides)


def test_the_cli_refuses_an_unknown_set_key_in_one_line(capsys):
    assert main(["info", "materials-property", "--set", "encoders.nonexistent.dim=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zoo: error: task 'materials-property': key 'encoders.nonexistent.dim'") and "\n" not in err
