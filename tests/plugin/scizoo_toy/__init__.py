"""A toy SciZoo plugin: an encoder (each character of a word, one token) and a fusion (max-pool), registered
through this distribution's entry points (see pyproject.toml), not by SciZoo's code. Each class has the members
its contract asks for (``encoders.base.Encoder``, ``encoders.base.Features``, ``fusion.common.Fusion``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from encoders.base import InputError, PositiveInt, Tokens, concat, pad_tokens, token_index
from fusion.common import Fused


@dataclass
class Chars:
    codes: np.ndarray  # [n_chars] int64 byte values

    @property
    def size(self) -> int:  # one token per character
        return len(self.codes)


class CharEncoder(nn.Module):
    """A word -> one token per character, a learned embedding of its byte."""

    out_dim: int

    def __init__(self, *, dim: PositiveInt = 32):
        super().__init__()
        self.out_dim = dim
        self.embed = nn.Embedding(128, dim)

    @staticmethod
    def featurize(raw) -> Chars:
        text = str(raw).strip()
        if not text or not text.isascii():
            raise InputError("word", f"expected ASCII characters, got {text[:20]!r}")
        return Chars(np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64))

    @staticmethod
    def collate(items: list[Chars | None]) -> dict:
        present = [(i, c) for i, c in enumerate(items) if c is not None]
        sizes = np.array([c.size for _, c in present], dtype=np.int64)
        return {"codes": concat([c.codes for _, c in present], np.int64),
                **token_index([i for i, _ in present], sizes, len(items))}

    def forward(self, batch: dict) -> Tokens:
        return pad_tokens(self.embed(batch["codes"]), batch["row"], batch["pos"], batch["size"])


class MaxFusion(nn.Module):
    """The largest value of each feature over every present token, through a linear layer."""

    def __init__(self, names: list[str], *, dim: PositiveInt = 32):
        super().__init__()
        self.out = nn.Linear(dim, dim)

    def forward(self, inputs: dict[str, Tokens]) -> Fused:
        x = torch.cat([t.x for t in inputs.values()], 1)
        mask = torch.cat([t.mask for t in inputs.values()], 1)
        pooled = x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
        return Fused(pooled=self.out(torch.nan_to_num(pooled, neginf=0.0)),
                     tokens={n: t.x for n, t in inputs.items()}, masks={n: t.mask for n, t in inputs.items()})
