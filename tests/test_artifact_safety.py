"""Loading a model folder from a stranger runs no code and fails clearly on anything off; writers do not collide
(one training run per --out, one predict per output); concurrent loads of one stored model all succeed."""
from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file

import zoo
from encoders import ZooError
from tests.conftest import ROOT, TINY
from zoo.artifacts import BUNDLED, load_artifact, resolve_weights, save, sha256_file
from zoo.cli import main

ROWS = [{"smiles": s} for s in ("CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1")]


@pytest.fixture
def artifact(tmp_path) -> Path:
    out = tmp_path / "model"
    shutil.copytree(BUNDLED / "molecule-solubility", out)
    return out


def _edit_config(folder: Path, edit) -> None:
    config = yaml.safe_load((folder / "config.yaml").read_text())
    edit(config)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def _refused(folder: Path, match: str) -> str:
    with pytest.raises(ZooError, match=match) as err:
        load_artifact(folder)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("damage", ["truncated", "one byte flipped"])
def test_damaged_weights_fail_on_their_hash_before_any_model_is_built(artifact, damage, monkeypatch):
    weights = artifact / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    monkeypatch.setattr("zoo.artifacts.ZooModel", lambda spec: pytest.fail("a model was built"))
    _refused(artifact, "sha256 does not match config.yaml")


@pytest.mark.parametrize("key, value", [
    ("encoders.molecule-dmpnn.type", "os.system"), ("fusion.type", "subprocess.Popen"),
    ("head.type", "builtins.eval"),
])
def test_a_config_naming_a_type_outside_the_registries_is_refused(artifact, key, value):
    def edit(config):
        node = config["model"]
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value

    _edit_config(artifact, edit)
    _refused(artifact, f"unknown type {value!r}")


def test_a_config_cannot_construct_python_objects(artifact, tmp_path):
    marker = tmp_path / "ran"
    text = (artifact / "config.yaml").read_text()
    (artifact / "config.yaml").write_text(f"pwned: !!python/object/apply:pathlib.Path.touch [{str(marker)!r}]\n"
                                          + text)
    _refused(artifact, "not valid YAML")
    assert not marker.exists()


def test_a_pickle_in_place_of_the_weights_is_never_unpickled(artifact, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (artifact / "model.safetensors").write_bytes(pickle.dumps({"w": Payload()}))
    _edit_config(artifact, lambda c: c.update(weights_sha256=sha256_file(artifact / "model.safetensors")))
    _refused(artifact, "not a readable safetensors file")
    assert not marker.exists()


def test_a_config_without_a_weights_hash_is_refused(artifact):
    _edit_config(artifact, lambda c: c.pop("weights_sha256"))
    _refused(artifact, "records no weights_sha256")


def test_a_shape_mismatch_names_the_tensor(artifact):
    weights = artifact / "model.safetensors"
    state = load_file(str(weights))
    name = sorted(state)[0]
    state[name] = state[name].reshape(-1)[:-1].clone()
    save_file(state, str(weights))
    _edit_config(artifact, lambda c: c.update(weights_sha256=sha256_file(weights)))
    _refused(artifact, f"tensor '{name}' has shape")


def _rewrite_weights(folder: Path, edit) -> None:
    """Change the weights and record their new hash, as a stranger's folder can."""
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    edit(state)
    save_file(state, str(weights))
    _edit_config(folder, lambda c: c.update(weights_sha256=sha256_file(weights)))


def test_weights_of_another_dtype_are_refused_naming_the_tensor(artifact):
    name = sorted(load_file(str(artifact / "model.safetensors")))[0]
    _rewrite_weights(artifact, lambda state: state.update({name: state[name].double()}))
    _refused(artifact, f"tensor '{name}' is torch.float64, the model expects torch.float32")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(artifact, bad):
    name = sorted(load_file(str(artifact / "model.safetensors")))[-1]
    _rewrite_weights(artifact, lambda state: state[name].view(-1).__setitem__(0, bad))
    _refused(artifact, f"tensor '{name}' holds NaN or infinite values")


HUGE = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_DATA, (3 << 30, 3 << 30))  # a regression fails here, not by exhausting the machine
from encoders import ZooError
from zoo.artifacts import load_artifact
start = time.perf_counter()
try:
    load_artifact(sys.argv[1])
except ZooError as err:
    print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    print(err)
"""


def test_a_config_claiming_a_huge_model_is_refused_before_it_is_allocated(artifact):
    # The weights still match their hash; only config.yaml says 40000 wide (13 GB, were it built).
    _edit_config(artifact, lambda c: c["model"]["encoders"]["molecule-dmpnn"].update(hidden=40000))
    done = subprocess.run([sys.executable, "-c", HUGE, str(artifact)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 2, done.stderr[-2000:]
    timing, message = done.stdout.splitlines()
    seconds, peak_gb = map(float, timing.split())  # the refusal's time; the whole process's peak memory
    print(f"refused in {seconds:.3f} s, peak RSS {peak_gb:.2f} GB")
    assert "has shape" in message and "40000" in message
    assert seconds < 2 and peak_gb < 1.5


def test_a_model_built_on_the_meta_device_leaves_no_weightless_backbone_cached():
    import torch
    from encoders.crystal import chgnet_backbone

    chgnet_backbone.cache_clear()
    with torch.device("meta"):
        chgnet_backbone("0.3.0")
    assert {p.device.type for p in chgnet_backbone("0.3.0").parameters()} == {"cpu"}


def test_every_bundled_artifact_records_the_hash_of_its_weights():
    for folder in sorted(p for p in BUNDLED.iterdir() if (p / "config.yaml").is_file()):
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert config["weights_sha256"] == sha256_file(folder / "model.safetensors"), folder.name


def test_a_save_that_dies_midway_leaves_the_previous_artifact_whole(artifact, monkeypatch):
    model = load_artifact(artifact)
    before, files = model.predict(ROWS), sorted(p.name for p in artifact.iterdir())

    def dies(state, path):
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr("zoo.artifacts.save_file", dies)
    with pytest.raises(KeyboardInterrupt):
        save(model, artifact, {})
    assert load_artifact(artifact).predict(ROWS) == before
    assert sorted(p.name for p in artifact.iterdir()) == files  # no temporary file left beside them


# -- concurrency ----------------------------------------------------------------------------------------------
HOLD = """
import sys, time
from pathlib import Path
from filelock import FileLock
Path(sys.argv[1]).parent.mkdir(parents=True, exist_ok=True)
with FileLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def held(tmp_path):
    """Hold a lock file from another process, as a running train or predict does."""
    procs = []

    def hold(path: Path) -> None:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True,
                                cwd=ROOT)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_second_training_run_into_one_folder_refuses(held, textbook_csv, tmp_path, capsys):
    out = tmp_path / "run"
    held(out / ".train.lock")
    sets = [f"--set={k}={v}" for k, v in TINY.items()]
    assert main(["train", "molecule-solubility", "--data", str(textbook_csv), "--out", str(out), *sets]) == 2
    assert "another training run is writing to this folder" in capsys.readouterr().err
    assert not (out / "model.safetensors").exists()


def test_a_refused_second_run_leaves_the_first_runs_record_for_resume(held, textbook_csv, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.yaml").write_text("the first run's record\n")
    held(out / ".train.lock")
    sets = [f"--set={k}={v}" for k, v in TINY.items()]
    assert main(["train", "molecule-solubility", "--data", str(textbook_csv), "--out", str(out), *sets]) == 2
    assert "another training run is writing to this folder" in capsys.readouterr().err
    assert (out / "run.yaml").read_text() == "the first run's record\n"


def test_a_second_predict_into_one_output_refuses(held, artifact, tmp_path, capsys):
    table = tmp_path / "in.csv"
    table.write_text("smiles\nCCO\n")
    output = tmp_path / "out.csv"
    held(tmp_path / ".out.csv.lock")
    assert main(["predict", str(artifact), "--input", str(table), "--output", str(output)]) == 2
    assert "another zoo predict is writing it" in capsys.readouterr().err
    assert not output.exists()


def test_the_lock_is_released_and_removed_after_a_run(artifact, tmp_path):
    table = tmp_path / "in.csv"
    table.write_text("smiles\nCCO\n")
    for _ in range(2):
        assert main(["predict", str(artifact), "--input", str(table), "--output", str(tmp_path / "out.csv")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "model", "out.csv"]


def test_concurrent_loads_of_one_stored_model(tmp_path, monkeypatch):
    """Four threads load the model in the local store at the same moment; all get the same model. (Loading only
    reads, and a download into the store is renamed into place whole: see the next test.)"""
    home = tmp_path / "home"
    shutil.copytree(BUNDLED / "molecule-solubility", home / "molecule-solubility")
    monkeypatch.setenv("ZOO_HOME", str(home))
    start = threading.Barrier(4)

    def load_and_predict(_):
        start.wait()
        return zoo.load("molecule-solubility").predict(ROWS)

    with ThreadPoolExecutor(4) as threads:
        results = list(threads.map(load_and_predict, range(4)))
    assert all(r == results[0] for r in results)
    assert resolve_weights(zoo.info("molecule-solubility")) == home / "molecule-solubility"


def test_concurrent_first_loads_download_once_and_see_a_whole_folder(tmp_path, monkeypatch):
    """An hf:// model not yet in the store: one thread downloads (slowly, file by file), the other waits,
    and neither ever sees a half-written folder."""
    import huggingface_hub

    calls = []

    def slow_download(repo_id, local_dir, allow_patterns):
        calls.append(repo_id)
        for name in allow_patterns:
            time.sleep(0.2)
            shutil.copy(BUNDLED / "molecule-solubility" / name, Path(local_dir) / name)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", slow_download)
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    spec = zoo.info("molecule-solubility", overrides={"weights": "hf://someone/solubility"})
    spec = spec.model_copy(update={"name": "solubility-from-the-hub"})  # no bundled weights under this name
    start = threading.Barrier(2)

    def first_load(_):
        start.wait()
        return load_artifact(resolve_weights(spec)).predict(ROWS)

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(first_load, range(2))
    assert a == b and calls == ["someone/solubility"]
    left = sorted(p.name for p in (tmp_path / "home").iterdir() if p.suffix != ".lock")  # the store's lock stays
    assert left == ["solubility-from-the-hub"]
