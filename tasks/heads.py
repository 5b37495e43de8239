"""Task heads. ``forward`` gives the raw output (standardised values or logits), ``loss`` compares it with
targets while ignoring missing ones, and ``decode`` turns it into the user's units."""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fusion.common import Fused


def _mlp(dim: int, hidden: int, out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


class RegressionHead(nn.Module):
    """Regression on standardised targets; the training set's mean and std are saved with the weights.

    ``loss: l1`` suits data scored by MAE with many exact values (band gaps of metals are all 0 eV)."""

    def __init__(self, dim: int, *, targets: list[str], hidden: int = 256, dropout: float = 0.0,
                 loss: Literal["mse", "l1"] = "mse"):
        super().__init__()
        self.targets, self.loss_fn = list(targets), {"mse": F.mse_loss, "l1": F.l1_loss}[loss]
        self.mlp = _mlp(dim, hidden, len(self.targets), dropout)
        self.register_buffer("mean", torch.zeros(len(self.targets)))
        self.register_buffer("std", torch.ones(len(self.targets)))

    def fit(self, y: np.ndarray) -> None:
        """Set the standardisation from training targets [N, n_targets] (NaN where missing)."""
        self.mean.copy_(torch.as_tensor(np.nanmean(y, 0)))
        self.std.copy_(torch.as_tensor(np.nan_to_num(np.nanstd(y, 0), nan=1.0)).clamp(min=1e-6))

    def forward(self, fused: Fused) -> torch.Tensor:
        return self.mlp(fused.pooled)

    def loss(self, raw: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        z = (torch.where(mask, target, self.mean) - self.mean) / self.std
        return _masked_mean(self.loss_fn(raw, z, reduction="none"), mask)

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        return raw * self.std + self.mean


class MultiLabelHead(nn.Module):
    """Independent binary labels (one logit each), as in Tox21 or SIDER; decodes to probabilities."""

    def __init__(self, dim: int, *, targets: list[str], hidden: int = 256, dropout: float = 0.0):
        super().__init__()
        self.targets = list(targets)
        self.mlp = _mlp(dim, hidden, len(self.targets), dropout)

    def fit(self, y: np.ndarray) -> None:
        if not np.isin(y[~np.isnan(y)], (0.0, 1.0)).all():
            raise ValueError("multi-label targets must be 0, 1 or missing")

    def forward(self, fused: Fused) -> torch.Tensor:
        return self.mlp(fused.pooled)

    def loss(self, raw: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(raw, torch.where(mask, target, 0.0), reduction="none")
        return _masked_mean(bce, mask)

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(raw)


HEADS = {"regression": RegressionHead, "multilabel": MultiLabelHead}
