"""Trained-model folders: config.yaml, model.safetensors, metrics.json, card.md.

Weights are safetensors only (loading a stranger's checkpoint must never run code), every file is written
to a temporary name and renamed into place, and config.yaml is written last and records the weights' sha256,
so a folder is either a complete artifact or refused on load. The config names its encoder, fusion and head
types, which must be registered ones (built in, or offered by an installed package's entry point): a config cannot
make the loader import or build anything else.

config.yaml is versioned by ``format`` (``FORMAT``). Format 2::

    format: 2
    model:            # what running the model needs, and all that loading validates (zoo.registry.ModelSpec)
      name, description, inputs, encoders, fusion, head, metric, ensemble
    provenance:       # how it was made, for the record; never validated on load
      task: {data, train, weights, references, bench}   # the rest of the task entry it was trained from
      versions, backbones, data_sha256
    weights_sha256: ...

Format 1 (written before formats had numbers, no ``format`` key) held the whole task entry under ``task`` beside
versions, backbones, data_sha256 and weights_sha256; ``upgrade_config`` reads it as format 2. A format above
``FORMAT`` is refused in one line: it was written by a newer SciZoo.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml
from filelock import FileLock, Timeout
from safetensors import SafetensorError
from torch.overrides import TorchFunctionMode
from safetensors.torch import load as load_safetensors, save_file

from encoders import ZooError
from zoo.model import Ensemble, ZooModel, build_model, resolve_device
from zoo.trust import FILE as TRUST_FILE, KINDS as TRUST_KINDS, Trust
from zoo.registry import (BUILTIN_REGISTRY, MODEL_KEYS, ModelSpec, Registry, TaskSpec, load_registry, safe_yaml,
                          validate_model)

BUNDLED = Path(__file__).resolve().parent / "weights"
FILES = ("config.yaml", "model.safetensors", "metrics.json", "card.md", "trust.safetensors")
FORMAT = 2  # the layout of config.yaml that ``save`` writes; ``load_artifact`` reads 1 to FORMAT


def zoo_home() -> Path:
    return Path(os.environ.get("ZOO_HOME", Path.home() / ".cache" / "scizoo"))


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename the finished file onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp (and some writers) make 0600; a saved file should be as readable as any
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


class _Replaced(Exception):
    """The lock file was removed (by the holder finishing) between our open and our lock: not a lock."""


_HELD: set[Path] = set()  # lock files this process holds, so a nested ``exclusive`` of the same one passes


@contextlib.contextmanager
def exclusive(path: Path, busy: str):
    """Hold the lock file ``path`` for the block, or fail at once with ZooError(``busy``) when another process
    holds it. The file is removed on the way out (while still held), so it leaves nothing behind; a process
    that opened it just before then finds its lock on a removed file and tries again."""
    path = Path(path).resolve()
    if path in _HELD:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)

    def same_file(fd: int) -> None:
        try:
            if os.path.samestat(os.fstat(fd), path.stat()):
                return
        except FileNotFoundError:
            pass
        raise _Replaced

    for _ in range(3):
        lock = FileLock(path, on_acquired=same_file)
        try:
            lock.acquire(timeout=0)
            break
        except Timeout:
            raise ZooError(busy) from None
        except _Replaced:
            continue
    else:
        raise ZooError(busy)
    _HELD.add(path)
    try:
        yield
    finally:
        _HELD.discard(path)
        path.unlink(missing_ok=True)
        lock.release()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("scizoo", "torch", "rdkit", "numpy", "pymatgen", "chgnet", "transformers", "peft"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def save(model: ZooModel | Ensemble, out: Path, metrics: dict, data_sha256: str | None = None) -> Path:
    if any(getattr(m, "merged", False) for m in model.modules()):  # its LoRA deltas are folded into the backbone
        raise ZooError("a model loaded for inference (LoRA merged) cannot be saved; load it with merge=False")
    out = Path(out)
    weights = out / "model.safetensors"
    skip = model.pretrained_frozen()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in skip}
    atomic_write(weights, lambda tmp: save_file(state, str(tmp)))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(out / "card.md", model_card(model.spec, metrics, data_sha256))
    spec = model.spec
    if isinstance(spec, TaskSpec):
        model_spec, task = spec.model_spec(), {k: v for k, v in spec.model_dump(mode="json").items() if k not in MODEL_KEYS}
    else:  # a loaded model saved again: it keeps the provenance it was loaded with
        model_spec, task = spec, getattr(model, "provenance", {}).get("task", {})
    config = {
        "format": FORMAT,
        "model": model_spec.model_dump(mode="json"),
        "provenance": {
            "task": task,
            "versions": versions(),
            # Frozen pretrained parts are not in model.safetensors; loading rebuilds them from these packages.
            "backbones": {n: e.backbone for n, e in model.encoders.items() if hasattr(e, "backbone")},
            "data_sha256": data_sha256 or getattr(model, "provenance", {}).get("data_sha256"),
        },
        "weights_sha256": sha256_file(weights),
    }
    atomic_write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    if model.trust:
        save_trust(model, out)
    return out


def upgrade_config(config: dict, where: str | os.PathLike = "config.yaml") -> dict:
    """A format 1 config (the whole task entry under ``task``) as format 2: the entry's model keys under
    ``model``, with ``train.ensemble`` as ``model.ensemble``; the rest of the entry, versions, backbones and the
    data's sha256 under ``provenance``. Nothing is validated here; ``read_config`` validates the model part."""
    task = config.get("task")
    if not isinstance(task, dict):
        raise ZooError(f"{where}: not a SciZoo model config (no 'format', and no 'task' mapping)")
    train = task.get("train") if isinstance(task.get("train"), dict) else {}
    model = {k: task[k] for k in MODEL_KEYS if k in task} | {"ensemble": train.get("ensemble", 1)}
    provenance = {"task": {k: v for k, v in task.items() if k not in MODEL_KEYS}}
    provenance |= {k: config[k] for k in ("versions", "backbones", "data_sha256") if k in config}
    trust = {"trust_sha256": config["trust_sha256"]} if "trust_sha256" in config else {}  # added by zoo calibrate
    return {"format": FORMAT, "model": model, "provenance": provenance, "weights_sha256": config.get("weights_sha256"),
            **trust}


def read_config(config, where: str | os.PathLike) -> tuple[ModelSpec, dict, str | None]:
    """A parsed config.yaml -> (its model, validated; its provenance, as recorded; the weights' sha256). Reads
    every format up to ``FORMAT`` (format 1 through ``upgrade_config``) and refuses a newer one in one line."""
    if not isinstance(config, dict):
        raise ZooError(f"{where}: not a SciZoo model config (not a mapping)")
    version = config.get("format", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ZooError(f"{where}: format {version!r} is not a SciZoo model format (1 to {FORMAT})")
    if version > FORMAT:
        raise ZooError(f"{where}: model format {version} was written by a newer SciZoo (this one reads formats 1 to "
                       f"{FORMAT}); upgrade scizoo to load it")
    if version == 1:
        config = upgrade_config(config, where)
    if not isinstance(config.get("model"), dict):
        raise ZooError(f"{where}: not a SciZoo model config (no 'model' mapping)")
    prefix = "task." if version == 1 else "model."
    # refuses any encoder, fusion or head type outside our registries
    spec = validate_model(config["model"], str(where), prefix)
    provenance = config.get("provenance") if isinstance(config.get("provenance"), dict) else {}
    sha = config.get("weights_sha256")
    return spec, provenance, sha if isinstance(sha, str) else None


def load_artifact(path: str | os.PathLike, device: str | torch.device = "auto", merge: bool = True) -> ZooModel | Ensemble:
    """A model folder -> the model, checked before anything is built from it: config.yaml is plain YAML
    naming only registered types, model.safetensors has the sha256 config.yaml records, and every tensor
    has the name, shape and dtype the model expects, and finite values. The expected shapes come from a build
    on the meta device (no memory), so a config that claims a huge model is refused before it is allocated.

    ``merge`` folds LoRA deltas into their backbones (``merge_lora``): a loaded model is for prediction, and a
    merged backbone runs as fast as the bare one. ``merge=False`` keeps them apart, to train further or save."""
    path = Path(path)
    config_path = path / "config.yaml"
    if not config_path.is_file():
        raise ZooError(f"{path}: not a SciZoo model folder (no config.yaml)")
    try:
        config = safe_yaml(config_path.read_text())  # safe: a config cannot construct Python objects
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ZooError(f"{config_path}: not valid YAML ({str(err).splitlines()[0]})") from None
    spec, provenance, weights_sha256 = read_config(config, config_path)
    if weights_sha256 is None:
        raise ZooError(f"{config_path}: records no weights_sha256, so model.safetensors cannot be checked")
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise ZooError(f"{path}: model.safetensors is missing")
    data = weights.read_bytes()  # hashed and parsed from the same bytes: no window for the file to change
    if hashlib.sha256(data).hexdigest() != weights_sha256:
        raise ZooError(f"{weights}: sha256 does not match config.yaml (truncated or modified file)")
    try:
        state = load_safetensors(data)
    except SafetensorError as err:
        raise ZooError(f"{weights}: not a readable safetensors file ({str(err).splitlines()[0]})") from None
    with torch.device("meta"), _ShapesOnly():
        shapes = build_model(spec)
    _check_tensors(weights, state, shapes)
    model = build_model(spec)
    model.load_state_dict(state, strict=False)  # every key was checked above; the rest came with the backbone
    model.provenance = provenance  # how it was made, as config.yaml records it (``save`` keeps it)
    model.trust = _read_trust(path, config, model)
    if merge:
        for encoder in model.modules():
            if hasattr(encoder, "merge_lora"):
                encoder.merge_lora()
    return model.to(resolve_device(device)).eval()


def _read_trust(path: Path, config: dict, model: ZooModel | Ensemble) -> Trust | None:
    """The model's trust summary (sigma, intervals, domain), checked against the sha256 config.yaml records; a
    model saved without one loads, and says so in one line."""
    sha = config.get("trust_sha256")
    if not isinstance(sha, str):
        if model.head.kind in TRUST_KINDS:
            print(f"{path}: no trust summary (saved before SciZoo kept one): predictions have no sigma, interval "
                  f"or domain columns; `zoo calibrate {path}` adds it", file=sys.stderr)
        return None
    file = path / TRUST_FILE
    data = file.read_bytes() if file.is_file() else b""
    if hashlib.sha256(data).hexdigest() != sha:
        raise ZooError(f"{file}: missing, or its sha256 does not match config.yaml (truncated or modified file)")
    return Trust.read(data, model.head, file)


def save_trust(model: ZooModel | Ensemble, out: Path) -> None:
    """Write ``model.trust`` into ``out`` and record its sha256 in config.yaml (``zoo calibrate``; ``save`` does
    both for a model it saves)."""
    model.trust.save(out / TRUST_FILE)
    config = safe_yaml((out / "config.yaml").read_text())
    config["trust_sha256"] = sha256_file(out / TRUST_FILE)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))


class _ShapesOnly(TorchFunctionMode):
    """A meta build (shapes only) without filling tensors with values: none are needed, and torch computes some
    meta results (random fills, arithmetic with a Python number) in Python code whose first use imports
    torch._dynamo, seconds that a load of a small model should not pay. An op missed here costs only time."""

    FILLS = {"normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "xavier_uniform_", "zeros_", "ones_"}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in self.FILLS:  # a Tensor method (self first) or a torch.nn.init function (tensor=)
            return args[0] if args else kwargs["tensor"]
        if name in ("randn", "rand"):
            return torch.empty(*args, **kwargs)
        if name in ("mul", "__mul__", "__rmul__") and len(args) == 2 and isinstance(args[1], (int, float)):  # x * 0.02: x's shape
            return args[0]
        return func(*args, **kwargs)


def _check_tensors(weights: Path, state: dict[str, torch.Tensor], model: ZooModel | Ensemble) -> None:
    """Every tensor of ``state`` is one ``model`` (which may be on the meta device) expects, of its shape and
    dtype, and finite; the frozen backbone's tensors are not saved, so not expected."""
    rebuilt = model.pretrained_frozen()
    expected = {k: v for k, v in model.state_dict().items() if k not in rebuilt}
    for key in sorted(set(expected) | set(state)):
        if key not in state or key not in expected:
            raise ZooError(f"{weights}: tensor {key!r} is {'missing' if key not in state else 'unexpected'}")
        if state[key].shape != expected[key].shape:
            raise ZooError(f"{weights}: tensor {key!r} has shape {tuple(state[key].shape)}, "
                           f"the model expects {tuple(expected[key].shape)}")
        if state[key].dtype != expected[key].dtype:
            raise ZooError(f"{weights}: tensor {key!r} is {state[key].dtype}, the model expects {expected[key].dtype}")
        if state[key].is_floating_point() and not np.isfinite(_as_numpy(state[key])).all():
            raise ZooError(f"{weights}: tensor {key!r} holds NaN or infinite values")


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """numpy's view of a CPU tensor (bfloat16, which numpy lacks, as float32): checks over many small tensors
    run far faster in numpy than as many torch ops."""
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def resolve_weights(spec: TaskSpec, registry: Registry | None = None) -> Path:
    """Where a registry task's weights are: explicit folder > local store > bundled > hf:// (when online). With
    none, the error gives the ``zoo train`` command that makes them (``registry``: where the task came from)."""
    if spec.weights != "bundled" and not spec.weights.startswith("hf://"):
        return Path(spec.weights).expanduser()
    for candidate in (zoo_home() / spec.name, BUNDLED / spec.name):
        if (candidate / "config.yaml").is_file():
            return candidate
    if spec.weights.startswith("hf://"):
        return download(spec.weights, zoo_home() / spec.name)
    from zoo.data import findable  # zoo.data reads and writes through this module

    origin = registry.origins.get(spec.name) if registry else None
    user = f" --registry {origin}" if origin and origin != BUILTIN_REGISTRY else ""
    data = "" if findable(spec) else " --data TABLE"
    raise ZooError(f"task {spec.name!r} has no trained weights here; train them with "
                   f"`zoo{user} train {spec.name}{data} --out {zoo_home() / spec.name}`")


def download(url: str, into: Path) -> Path:
    """Fetch an artifact folder from the Hugging Face Hub into the local store (refused when offline).

    One process downloads (the others wait on a lock), into a temporary folder renamed into place when
    complete, so a concurrent ``load`` sees no folder or a whole one. What arrives is checked like any
    artifact on load (sha256, registered types, safetensors only)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ZooError(f"{url}: not in the local store {into} and HF_HUB_OFFLINE is set")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ZooError(f"{url}: downloading needs huggingface_hub (pip install huggingface_hub)") from None
    into.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(into.parent / f".{into.name}.download.lock"):
        if not (into / "config.yaml").is_file():  # another process may have fetched it while we waited
            partial = Path(tempfile.mkdtemp(dir=into.parent, prefix=f".{into.name}."))
            try:
                snapshot_download(url.removeprefix("hf://"), local_dir=partial, allow_patterns=list(FILES))
                shutil.rmtree(into, ignore_errors=True)  # a folder left without config.yaml is incomplete
                os.replace(partial, into)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
    return into


def load(name_or_path: str | os.PathLike, registry: Registry | None = None, device: str | torch.device = "auto",
         merge: bool = True) -> ZooModel | Ensemble:
    """A trained model from a folder, or from a registry task name (weights resolved as above); ``merge`` as in
    ``load_artifact``."""
    if Path(name_or_path).is_dir():
        return load_artifact(name_or_path, device, merge)
    registry = registry or load_registry()
    return load_artifact(resolve_weights(registry.task(str(name_or_path)), registry), device, merge)


def model_card(spec: TaskSpec | ModelSpec, metrics: dict, data_sha256: str | None = None) -> str:
    if not isinstance(spec, TaskSpec):  # a loaded model saved again: its data and training are in config.yaml
        inputs = ", ".join(f"{n} ({i.column} -> {i.encoder}, {i.transfer})" for n, i in spec.inputs.items())
        return (f"# {spec.name}\n\n{spec.description}\n\n- Inputs: {inputs}\n- Fusion: {spec.fusion.type}; head: "
                f"{spec.head.type} -> {', '.join(spec.head.targets)} ({spec.head.unit or 'no unit'})\n"
                f"- Data, split and training: config.yaml's provenance\n")
    refs = "\n".join(
        f"| {name} | {r.value}{f' ± {r.std}' if r.std is not None else ''} | {r.source} |"
        for name, r in spec.references.items()
    )
    test = metrics.get("test", {}).get(spec.metric)
    test_text = (f"{test:.4f}" if isinstance(test, float) else
                 "none, no test set (the split's test fraction is 0)" if metrics.get("n_test") == 0 else "not measured")
    inputs = ", ".join(f"{n} ({i.column} -> {i.encoder}, {i.transfer})" for n, i in spec.inputs.items())
    k = spec.train.ensemble
    ensemble = f"; an ensemble of {k} models (seeds {spec.train.seed}-{spec.train.seed + k - 1}), outputs averaged" if k > 1 else ""
    data = f"{spec.data.dataset}/{spec.data.file}" if spec.data.dataset else "a table of the user's"
    return f"""# {spec.name}

{spec.description}

- Inputs: {inputs}
- Fusion: {spec.fusion.type}; head: {spec.head.type} -> {', '.join(spec.head.targets)} ({spec.head.unit or 'no unit'})
- Data: {data} (sha256 {data_sha256 or 'not recorded'}; source: {spec.data.source or 'not recorded'})
- Split: {spec.data.describe_split()}, seed {spec.train.seed}{ensemble}
- Test {spec.metric}: {test_text}

| reference | {spec.metric} | source |
|---|---|---|
{refs}
"""
