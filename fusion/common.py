"""What every fusion returns, and the modality dropout they share."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from encoders.base import Tokens


@dataclass
class Fused:
    pooled: torch.Tensor               # [B, D]
    tokens: dict[str, torch.Tensor]    # name -> [B, T, D], the modality tokens as the fusion saw them
    masks: dict[str, torch.Tensor]     # name -> [B, T], True where a token is real


def drop_modalities(inputs: dict[str, Tokens], p: float) -> dict[str, Tokens]:
    """Hide whole modalities per row with probability ``p`` in training, always keeping one present.

    Teaches the model to predict from any subset of modalities, the way it will meet them in the wild.
    """
    present = torch.stack([t.mask.any(1) for t in inputs.values()], 1)  # [B, M]
    keep = present & (torch.rand(present.shape, device=present.device) >= p)
    # A row that lost everything keeps one of the modalities it had, chosen at random.
    lost = present.any(1) & ~keep.any(1)
    if lost.any():
        choice = torch.multinomial(present[lost].float(), 1).squeeze(1)
        keep[lost.nonzero().squeeze(1), choice] = True
    return {name: Tokens(t.x, t.mask & keep[:, i : i + 1]) for i, (name, t) in enumerate(inputs.items())}
