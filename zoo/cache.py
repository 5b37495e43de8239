"""On-disk cache of a data set's featurization, so a second run does not recompute slow features (CHGNet).

Keyed by the inputs' encoder configs and source code, the data file's sha256 and the package version: the
source, because a change to what an encoder computes (CHGNet's site energy was added as a feature) must not
load features of the old shape under an unchanged config. Features are dataclasses of numpy arrays (and
ints); each field is stored concatenated with per-row lengths in an ``.npz`` read back with
``allow_pickle=False``, so a cache file can never run code.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from pathlib import Path

import numpy as np

from encoders import ENCODERS
from zoo.artifacts import atomic_write, versions, zoo_home
from zoo.registry import TaskSpec


def _source_sha256(encoder_type: str) -> str:
    return hashlib.sha256(Path(inspect.getfile(ENCODERS[encoder_type])).read_bytes()).hexdigest()


def cache_key(spec: TaskSpec, data_sha256: str) -> str:
    configs = {n: spec.encoders[i.encoder].model_dump() for n, i in spec.inputs.items()}
    config = {
        "inputs": {n: [i.column, i.transfer, configs[n], _source_sha256(configs[n]["type"])]
                   for n, i in spec.inputs.items()},
        "targets": spec.head.targets, "data": data_sha256, "scizoo": versions().get("scizoo"),
    }
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:32]


def cache_path(spec: TaskSpec, data_sha256: str) -> Path:
    return zoo_home() / "features" / f"{spec.name}-{cache_key(spec, data_sha256)}.npz"


def save_features(path: Path, rows: list[dict], types: dict[str, type], extra: dict[str, np.ndarray]) -> None:
    arrays = dict(extra)
    for name, cls in types.items():
        items = [r[name] for r in rows]
        arrays[f"{name}/present"] = np.array([f is not None for f in items])
        for field in dataclasses.fields(cls):
            values = [np.atleast_1d(getattr(f, field.name)) for f in items if f is not None]
            arrays[f"{name}/{field.name}/len"] = np.array([len(v) for v in values], dtype=np.int64)
            arrays[f"{name}/{field.name}"] = np.concatenate(values) if values else np.zeros(0)
    atomic_write(path, lambda tmp: np.savez(tmp, **arrays))


def load_features(path: Path, types: dict[str, type]) -> tuple[list[dict], dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    n = len(next(arrays[f"{name}/present"] for name in types))
    rows: list[dict] = [{} for _ in range(n)]
    for name, cls in types.items():
        present = arrays.pop(f"{name}/present")
        fields = {}
        for field in dataclasses.fields(cls):
            lengths = arrays.pop(f"{name}/{field.name}/len")
            parts = np.split(arrays.pop(f"{name}/{field.name}"), np.cumsum(lengths)[:-1])
            fields[field.name] = [int(v[0]) for v in parts] if field.type in ("int", int) else parts
        values = iter(zip(*fields.values())) if fields else iter(())
        for i in range(n):
            rows[i][name] = cls(*next(values)) if present[i] else None
    return rows, arrays
