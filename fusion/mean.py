"""Baseline fusion: the masked mean of each modality's tokens, averaged over the modalities a row has."""
from __future__ import annotations

import torch
from torch import nn

from encoders.base import Fraction, PositiveInt, Tokens
from fusion.common import Fused, drop_modalities, register_fusion


@register_fusion("mean")
class MeanFusion(nn.Module):
    def __init__(self, names: list[str], *, dim: PositiveInt = 128, modality_dropout: Fraction = 0.0):
        super().__init__()
        self.modality_dropout = modality_dropout
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())

    def forward(self, inputs: dict[str, Tokens]) -> Fused:
        if self.training and self.modality_dropout > 0 and len(inputs) > 1:
            inputs = drop_modalities(inputs, self.modality_dropout)
        means, present = [], []
        for t in inputs.values():
            count = t.mask.sum(1, keepdim=True)
            means.append((t.x * t.mask.unsqueeze(-1)).sum(1) / count.clamp(min=1))
            present.append(count > 0)
        means, present = torch.stack(means, 1), torch.stack(present, 1).float()  # [B, M, D], [B, M, 1]
        if not (present.sum(1) > 0).all():
            raise ValueError("a row reached the fusion with no modality present; reject it before the model")
        pooled = (means * present).sum(1) / present.sum(1)
        return Fused(pooled=self.out(pooled), tokens={n: t.x for n, t in inputs.items()}, masks={n: t.mask for n, t in inputs.items()})
