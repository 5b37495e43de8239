"""The encoder contract shared by every modality.

An encoder is a torch module with four members:

- ``featurize(raw)``: one raw cell -> a CPU feature object; raises ``InputError`` on bad input;
- ``collate(features)``: a list of features (``None`` where a row lacks the modality) -> a batch;
- ``forward(batch)``: -> ``Tokens(x [B, T, out_dim], mask [B, T])``;
- ``out_dim``: the width of its tokens.

It may add ``featurize_many(raws)``: many cells -> a list holding each cell's features, or its ``InputError``
in its place (one bad cell never fails the others), for an encoder that is faster over many cells at once (a
backbone run on a batch). ``featurize_cells`` uses it where there is one.

Encoders register themselves by type name with ``@register_encoder``, as timm registers models.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable

import numpy as np
import torch
from annotated_types import Ge, Gt, Lt
from pydantic import AllowInfNan

ENCODERS: dict[str, type[torch.nn.Module]] = {}
# The largest file a table cell may name (an encoder may set a smaller bound): a cell naming a 50 GB file
# is a per-row error, not a job that stalls on reading it.
MAX_FILE_BYTES = 256 << 20


# Bounded types for constructor arguments. The registry checks a component's params against its constructor's
# type hints, so a width of 0 or a dropout of 2 fails on load with the key, not as a traceback from torch.
PositiveInt = Annotated[int, Gt(0)]
PositiveFloat = Annotated[float, Gt(0), AllowInfNan(False)]
Fraction = Annotated[float, Ge(0), Lt(1)]  # a probability that must leave something (dropout)


def building_on_meta() -> bool:
    """Whether modules are being built on the ``meta`` device (shapes only, no memory): a constructor that
    would read pretrained weights builds the bare architecture instead, and caches nothing."""
    return torch.get_default_device().type == "meta"


class ZooError(Exception):
    """An error a user can fix; its message is one line that says what, where and why."""


class InputError(ZooError, ValueError):
    """One raw input that cannot be featurized; names the modality and the reason."""

    def __init__(self, modality: str, why: str):
        self.modality, self.why = modality, why
        super().__init__(f"{modality}: {why}")


def input_file(text: str, modality: str, max_bytes: int = MAX_FILE_BYTES) -> Path:
    """The file a table cell names, checked before anything reads it. Relative paths are taken from the data
    root when the user sets one (``ZOO_DATA_ROOT``, or ``zoo predict --data-root``), and a path that leaves
    that root (``..``, an absolute path, a symlink) is refused, so a table cannot make a job read any file.
    Devices, pipes and files over ``max_bytes`` are refused too."""
    root = os.environ.get("ZOO_DATA_ROOT")
    path = Path(text).expanduser()
    if root and not path.is_absolute():
        path = Path(root) / path
    try:
        resolved = path.resolve(strict=True)
    except FileNotFoundError:
        raise InputError(modality, f"no such file {text!r}") from None
    except (OSError, RuntimeError, ValueError) as err:  # a symlink loop (RuntimeError before Python 3.13), a NUL
        raise InputError(modality, f"cannot resolve {text!r}: {err}") from None  # byte in the name (ValueError)
    if root and not resolved.is_relative_to(Path(root).resolve()):
        raise InputError(modality, f"{text!r} points outside the data root {root}")
    if not resolved.is_file():
        raise InputError(modality, f"{text!r} is not a file")
    size = resolved.stat().st_size
    if size > max_bytes:
        raise InputError(modality, f"{text!r} is {size:,} bytes, over the limit of {max_bytes:,}")
    return resolved


@dataclass
class Tokens:
    """A padded set of tokens: ``x`` [B, T, D] and ``mask`` [B, T], True where a token is real."""

    x: torch.Tensor
    mask: torch.Tensor


def featurize_cells(encoder: torch.nn.Module, raws: list) -> list:
    """Each cell's features from ``encoder``, or the ``InputError`` it raised: through its ``featurize_many``
    where it has one, else ``featurize`` cell by cell."""
    if hasattr(encoder, "featurize_many"):
        return encoder.featurize_many(raws)
    results = []
    for raw in raws:
        try:
            results.append(encoder.featurize(raw))
        except InputError as err:
            results.append(err)
    return results


def register_encoder(name: str) -> Callable[[type], type]:
    def add(cls: type) -> type:
        if name in ENCODERS:
            raise ValueError(f"encoder type {name!r} is registered twice")
        ENCODERS[name] = cls
        return cls

    return add


def build_encoder(name: str, **config) -> torch.nn.Module:
    if name not in ENCODERS:
        raise ZooError(f"unknown encoder type {name!r}; registered: {', '.join(sorted(ENCODERS))}")
    return ENCODERS[name](**config)


def pad_tokens(h: torch.Tensor, row: torch.Tensor, pos: torch.Tensor, batch_size: int) -> Tokens:
    """Scatter flat per-item vectors ``h`` [N, D] of rows ``row`` at positions ``pos`` into padded tokens."""
    length = int(pos.max()) + 1 if pos.numel() else 1
    x = h.new_zeros(batch_size, length, h.shape[-1])
    mask = torch.zeros(batch_size, length, dtype=torch.bool, device=h.device)
    x[row, pos] = h
    mask[row, pos] = True
    return Tokens(x, mask)


def token_index(rows: list[int], sizes: np.ndarray, batch_size: int) -> dict:
    """The batch row and position of every token, for ``pad_tokens``; ``rows`` holds ``sizes`` tokens each."""
    sizes = np.asarray(sizes, dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    return {
        "row": torch.as_tensor(np.repeat(np.asarray(rows, dtype=np.int64), sizes), dtype=torch.long),
        "pos": torch.as_tensor(np.arange(sizes.sum()) - np.repeat(starts, sizes), dtype=torch.long),
        "size": batch_size,
    }


def concat(arrays: list[np.ndarray], dtype, width: int | None = None) -> torch.Tensor:
    """Concatenate per-row arrays (an empty batch gives an empty tensor of the right shape)."""
    if arrays:
        return torch.as_tensor(np.concatenate(arrays).astype(dtype))
    return torch.as_tensor(np.zeros((0,) if width is None else (0, width), dtype=dtype))
