"""SciZoo: a registry of multimodal scientific tasks with trained models.

    import zoo
    zoo.list_tasks()
    model = zoo.load("molecule-solubility")
    model.predict([{"smiles": "CCO"}])   # -> [{"logS": ...}]
"""
from __future__ import annotations

import os

from encoders import InputError, ZooError
from zoo.artifacts import load as _load
from zoo.model import Ensemble, ZooModel
from zoo.predict import predict_table
from zoo.registry import TaskSpec, load_registry
from zoo.train import Trainer

__all__ = ["Ensemble", "InputError", "TaskSpec", "Trainer", "ZooError", "ZooModel", "info", "list_tasks", "load",
           "predict_table", "train"]


def list_tasks(registry: str | os.PathLike | None = None) -> list[str]:
    return load_registry(registry).names()


def info(name: str, registry: str | os.PathLike | None = None, overrides: dict | None = None) -> TaskSpec:
    """The resolved, validated spec of a task; ``overrides`` use dotted keys, e.g. ``{"train.epochs": 5}``."""
    return load_registry(registry).task(name, overrides)


def load(name_or_path: str | os.PathLike, registry: str | os.PathLike | None = None,
         device: str = "auto", merge: bool = True) -> ZooModel | Ensemble:
    """A trained model from a folder or a registry task name (explicit folder > $ZOO_HOME > bundled > hf://),
    for prediction: LoRA deltas are merged into their backbones unless ``merge=False`` (to train it further).
    ``device``: ``auto`` (the GPU when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    return _load(name_or_path, load_registry(registry) if registry else None, device, merge)


def train(name: str, rows: list[dict], out: str | os.PathLike | None = None,
          registry: str | os.PathLike | None = None, overrides: dict | None = None, progress: bool = True,
          device: str = "auto", workers: int | str = 0):
    """Train a registry task on rows (dicts keyed by column); returns (model, metrics). ``device`` and ``workers``
    as for ``Trainer``."""
    return Trainer(info(name, registry, overrides), out, progress, device, workers).fit(rows)
