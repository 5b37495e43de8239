"""The fusion contract (``Fusion``), what every fusion returns (``Fused``), the registry of fusion types, and the
modality dropout they share."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from encoders.base import Tokens, TypeRegistry, check_contract, check_keyword


@dataclass
class Fused:
    pooled: torch.Tensor               # [B, D]
    tokens: dict[str, torch.Tensor]    # name -> [B, T, D], the modality tokens as the fusion saw them
    masks: dict[str, torch.Tensor]     # name -> [B, T], True where a token is real


class Fusion(Protocol):
    """Fuses a batch's modality tokens into one vector per row: a torch module built as ``cls(names, *, dim,
    **params)``, ``names`` the task's inputs in order and ``dim`` the width every input's tokens are projected to
    (and of ``pooled``); the other keyword-only params come from the registry entry, checked against their hints.

    ``forward({name: Tokens(x [B, T_name, dim], mask [B, T_name])})`` -> ``Fused(pooled [B, dim], tokens {name:
    [B, T_name, dim]}, masks {name: [B, T_name]})``. A row without a modality has it all masked; a row with no
    token at all never reaches a fusion (the data path refuses it)."""

    def forward(self, inputs: dict[str, Tokens]) -> Fused: ...


def check_fusion(cls, what: str) -> None:
    check_contract(cls, Fusion, what)
    check_keyword(cls, what, "dim", "Fusion contract (fusion.common.Fusion: cls(names, *, dim, **params))")


FUSIONS = TypeRegistry("fusion", check_fusion, group="scizoo.fusions")
register_fusion = FUSIONS.register  # class decorator: @register_fusion("name"), checked against ``Fusion``


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
