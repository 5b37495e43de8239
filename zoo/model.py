"""A task's model: one encoder per named encoder, a projection per input, a fusion and a head.

It also owns the row-level data path (``featurize`` -> ``collate``) so training and inference share it.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from encoders import InputError, Tokens, build_encoder
from fusion import FUSIONS
from tasks import HEADS
from zoo.registry import TaskSpec


def is_missing(value) -> bool:
    """An empty cell: the row lacks this modality (a mask, not an error, unless it lacks every one)."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


class ZooModel(nn.Module):
    def __init__(self, spec: TaskSpec):
        super().__init__()
        self.spec = spec
        dim = spec.fusion.params.get("dim", 128)
        self.encoders = nn.ModuleDict({n: build_encoder(e.type, **e.params) for n, e in spec.encoders.items()})
        self.project = nn.ModuleDict(
            {n: nn.Linear(self.encoders[i.encoder].out_dim, dim) for n, i in spec.inputs.items()}
        )
        self.fusion = FUSIONS[spec.fusion.type](list(spec.inputs), **spec.fusion.params)
        self.head = HEADS[spec.head.type](dim, targets=list(spec.head.targets), **spec.head.params)
        for name, inp in spec.inputs.items():
            if inp.transfer == "frozen":
                self.encoders[inp.encoder].requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def train(self, mode: bool = True):
        super().train(mode)
        for inp in self.spec.inputs.values():  # a frozen backbone keeps its inference behaviour (dropout, BN)
            if inp.transfer == "frozen":
                self.encoders[inp.encoder].eval()
        return self

    # -- data path -------------------------------------------------------------------------------------
    def featurize(self, row: dict) -> dict[str, Any]:
        """One table row -> features per input (None where the cell is empty). Raises InputError."""
        features, empty = {}, []
        for name, inp in self.spec.inputs.items():
            raw = row.get(inp.column)
            if is_missing(raw):
                features[name] = None
                empty.append(inp.column)
                continue
            try:
                features[name] = self.encoders[inp.encoder].featurize(raw)
            except InputError as err:
                raise InputError(err.modality, f"column {inp.column!r}: {err.why}") from None
        if len(empty) == len(features):
            raise InputError("row", f"every input is empty ({', '.join(repr(c) for c in dict.fromkeys(empty))})")
        return features

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            name: self.encoders[inp.encoder].collate([f[name] for f in features])
            for name, inp in self.spec.inputs.items()
        }

    def targets(self, rows: list[dict]) -> np.ndarray:
        """Targets [N, n_targets] as float, NaN where missing or not a number."""
        out = np.full((len(rows), len(self.spec.head.targets)), np.nan)
        for i, row in enumerate(rows):
            for j, column in enumerate(self.spec.head.targets.values()):
                try:
                    out[i, j] = float(row.get(column))
                except (TypeError, ValueError):
                    pass
        return out

    # -- model -----------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        tokens = {}
        for name, inp in self.spec.inputs.items():
            t = self.encoders[inp.encoder](batch[name])
            tokens[name] = Tokens(self.project[name](t.x), t.mask)
        return self.head(self.fusion(tokens))

    @torch.no_grad()
    def predict(self, rows: list[dict], batch_size: int = 256) -> list[dict[str, Any]]:
        """Predictions per row in the head's units: ``{target: value}``, or ``{"error": why}`` for a bad row."""
        self.eval()
        results: list[dict[str, Any]] = [{} for _ in rows]
        good: list[tuple[int, dict]] = []
        for i, row in enumerate(rows):
            try:
                good.append((i, self.featurize(row)))
            except InputError as err:
                results[i] = {"error": str(err)}
        for start in range(0, len(good), batch_size):
            chunk = good[start : start + batch_size]
            batch = to_device(self.collate([f for _, f in chunk]), self.device)
            values = self.head.decode(self(batch)).float().cpu().numpy()
            for (i, _), v in zip(chunk, values):
                results[i] = dict(zip(self.spec.head.targets, map(float, v)))
        return results
