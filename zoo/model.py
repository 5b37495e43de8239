"""A task's model: one encoder per named encoder, a projection per input, a fusion and a head.

It also owns the row-level data path (``featurize`` -> ``collate``) so training and inference share it. An
``Ensemble`` of such models (``train.ensemble``) runs through the same data path and averages their outputs.
"""
from __future__ import annotations

import ctypes
import math
import os
from typing import Any, Iterator, NamedTuple, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from encoders import InputError, Tokens, ZooError, build_encoder
from encoders.base import featurize_cells
from fusion import FUSIONS
from tasks import HEADS
from zoo.registry import TaskSpec
from zoo.trust import model_spread, row_elements


def is_missing(value) -> bool:
    """An empty cell: the row lacks this modality (a mask, not an error, unless it lacks every one)."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def feature_size(features: dict) -> int:
    """A row's size for batching: the ``size`` of each present input's features (``encoders.Features``), summed."""
    return sum(f.size for f in features.values() if f is not None)


# Padded tokens (rows x longest row, in ``feature_size`` units) a prediction batch may hold. MiniLM over JNLPBA
# sentences (~40 pieces) on 2 CPU threads ran 93 sentences/s at 4096, 84 at 8192, 60 at 256 rows unbounded (37%
# padding): past a few thousand tokens more rows only add padding and bigger [B, T, D] intermediates.
BATCH_TOKENS = 4096


def size_batches(sizes: list[int], batch_size: int, tokens: int | None) -> list[tuple[int, int]]:
    """(start, end) of consecutive batches over ``sizes`` sorted ascending: at most ``batch_size`` rows, and
    rows x the last (longest) row's size at most ``tokens`` (None: no limit); a row over it alone is a batch.
    Rows all of one size (a spectrum on its grid, an image) pad nothing, so only ``batch_size`` cuts them: a
    1,024-point spectrum would otherwise go 4 to a batch, at 40% of the rate."""
    if sizes and sizes[0] == sizes[-1]:
        tokens = None
    bounds, start = [], 0
    for i, size in enumerate(sizes):  # would row i still fit in the batch [start, i]?
        rows = i - start + 1
        if rows > batch_size or (tokens is not None and rows > 1 and rows * size > tokens):
            bounds.append((start, i))
            start = i
    if sizes:
        bounds.append((start, len(sizes)))
    return bounds


# Rows training featurizes together: enough for an encoder's batched backbone (CHGNet).
FEATURIZE_ROWS = 64

# Rows prepared together by ``Inference.predict``: a worker's unit of work, and the window rows are sorted by size
# in (a wider window pads less; predict_table's chunks are its --chunk-rows).
PREPARE_ROWS = 1024


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` as torch reads them. Under
    torchrun ``auto`` and a bare ``cuda`` are this process's own GPU (LOCAL_RANK). A GPU asked for and not there
    is a ZooError."""
    if str(device) in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    if str(device) == "auto":
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ZooError(f"device {device!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ZooError(f"device {str(device)!r}: torch sees no CUDA GPU here (use --device cpu or auto)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ZooError(f"device {str(device)!r}: there are {torch.cuda.device_count()} CUDA GPUs")
    return device


def resolve_workers(workers: int | str) -> int:
    """Worker processes that featurize and collate: a count, or ``auto``: the cores this process may run on,
    shared among the torchrun processes of this machine (LOCAL_WORLD_SIZE)."""
    if workers == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    try:
        count = int(workers)
    except ValueError:
        raise ZooError(f"workers {workers!r}: expected a number or auto") from None
    if count < 0:
        raise ZooError(f"workers {count}: expected 0 (featurize in this process) or more")
    return count


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def reuse_freed_memory() -> bool:
    """Have glibc's malloc serve blocks up to 32 MB (a batch's activations on the CPU) from its heap and keep what
    is freed for the next batch, instead of mapping fresh pages from the kernel for each tensor, zero-filled and
    faulted in one by one, and handing them back at its free: the D-MPNN's forward ran 1.4x faster at batch 256.
    The process keeps its peak heap (memory returns to the kernel only past 1 GB free at the top). For a process
    that owns its memory use, as the ``zoo`` command does. True where it applied (glibc), else False."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):  # no glibc: macOS, Windows
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20) and mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


class Batch(NamedTuple):
    """Rows of a chunk collated for the model."""

    index: list[int]                   # their rows in the chunk
    features: list | None              # their features, where the head's describe reads them
    collated: dict                     # the model's input
    elements: list | None              # their atomic numbers, where the trust summary checks them


class Prepared(NamedTuple):
    """A chunk of rows made ready for the model: what runs off the main process."""

    chunk: int                         # which chunk of the input
    rows: int                          # how many rows it has
    errors: dict[int, str]             # {row in the chunk: why it failed}
    batches: list[Batch]


class ChunkSource(Protocol):
    """(chunk number, rows) of an input, in order; iterable more than once (each worker process reads it)."""

    def __iter__(self) -> Iterator[tuple[int, list[dict]]]: ...


class RowChunks:
    """A list of rows, ``size`` at a time."""

    def __init__(self, rows: list[dict], size: int = PREPARE_ROWS):
        self.rows, self.size = rows, size

    def __iter__(self):
        for k, start in enumerate(range(0, len(self.rows), self.size)):
            yield k, self.rows[start : start + self.size]


class _Prepare(IterableDataset):
    """``prepare`` over a source's chunks; worker w of W takes chunks w, w + W, ... and the DataLoader returns
    them in order."""

    def __init__(self, model: "Inference", source: ChunkSource, batch_size: int, tokens: int | None):
        self.model, self.source, self.batch_size, self.tokens = model, source, batch_size, tokens

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for k, (chunk, rows) in enumerate(self.source):
            if k % workers == worker:
                yield self.model.prepare(chunk, rows, self.batch_size, self.tokens)


class Inference:
    """The batch data path of a model (one, or an ensemble): rows -> features -> batches -> head outputs, over its
    ``featurize_rows``, ``collate``, ``forward`` and ``head``.

    The CPU side (``prepare``: featurize, sort by size, batch, collate) runs per chunk of rows, in DataLoader
    worker processes when there are workers: they prepare the next chunks while the model runs this one, and
    hand over only collated tensors (in shared memory; pinned for a GPU), which cost little to pass."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def prepare(self, chunk: int, rows: list[dict], batch_size: int = 256,
                tokens: int | None = BATCH_TOKENS) -> Prepared:
        """Featurize ``rows`` (``featurize_rows``), sort them by size and collate batches of at most
        ``batch_size`` rows and ``tokens`` padded tokens (``size_batches``). A batch keeps its rows' features
        only when the head's ``describe`` reads them: passing features between processes costs as much as
        making them."""
        good, errors = [], {}  # good: (size, row, features)
        for i, (features, err) in enumerate(self.featurize_rows(rows)):
            if err is None:
                good.append((feature_size(features), i, features))
            else:
                errors[i] = str(err)
        good.sort(key=lambda item: item[0])
        batches = []
        elements = self.trust is not None and self.trust.tracks_elements
        for start, end in size_batches([size for size, _, _ in good], batch_size, tokens):
            features = [f for _, _, f in good[start:end]]
            batches.append(Batch([i for _, i, _ in good[start:end]],
                                 features if self.head.describe_uses_features else None, self.collate(features),
                                 [row_elements(f) for f in features] if elements else None))
        return Prepared(chunk, len(rows), errors, batches)

    def prepared(self, source: ChunkSource, batch_size: int = 256, workers: int = 0,
                 tokens: int | None = BATCH_TOKENS) -> Iterator[Prepared]:
        """``prepare`` over each chunk of ``source`` in order: here, or ahead of the caller in ``workers``
        processes."""
        if not workers:
            return (self.prepare(chunk, rows, batch_size, tokens) for chunk, rows in source)
        return iter(DataLoader(_Prepare(self, source, batch_size, tokens), batch_size=None, num_workers=workers,
                               pin_memory=self.device.type == "cuda"))

    @torch.no_grad()
    def outputs(self, prepared: Prepared) -> Iterator[tuple[list[int], list | None, torch.Tensor]]:
        """(rows, features or None, raw head output) of each batch of a prepared chunk."""
        self.eval()
        for index, features, batch, _ in prepared.batches:
            yield index, features, self(to_device(batch, self.device))

    trust = None  # a ``zoo.trust.Trust`` when the model has a trust summary

    def output_columns(self, interval: float | None = None) -> dict[str, str]:
        """Each output column ``describe`` gives -> float, bool or text: the head's, then the trust summary's."""
        head = {name: "float" if name in self.head.numeric else "text" for name in self.head.outputs}
        return head | (self.trust.columns(interval) if self.trust else {})

    @torch.no_grad()
    def describe(self, prepared: Prepared, interval: float | None = None) -> list[dict[str, Any]]:
        """Each row's output columns (``output_columns``): the head's (``{target: value}``, or entities) and, with
        a trust summary, sigma, domain and (at coverage ``interval``) conformal intervals or sets; or
        ``{"error": why}``."""
        self.eval()
        results: list[dict[str, Any]] = [{} for _ in range(prepared.rows)]
        for i, why in prepared.errors.items():
            results[i] = {"error": why}
        for index, features, batch, elements in prepared.batches:
            raw, pooled, parts = self.run(to_device(batch, self.device))
            values = self.head.decode(raw).float().cpu().numpy()
            # a head that scores its own decoding (tags: each word's probability) describes with it
            scored = self.head.confidence(raw, values) if hasattr(self.head, "confidence") else None
            for k, (i, v) in enumerate(zip(index, values)):
                extra = {} if scored is None else {"confidence": scored[k]}
                results[i] = self.head.describe(v, features and features[k], **extra)
            if self.trust:
                extra = self.trust.describe(values, pooled.float().cpu().numpy(), model_spread(self.head, raw, parts),
                                            interval, elements)
                for i, more in zip(index, extra):
                    results[i] |= more
        return results

    def predict(self, rows: list[dict], batch_size: int = 256, workers: int | str = 0,
                tokens: int | None = BATCH_TOKENS, interval: float | None = None) -> list[dict[str, Any]]:
        """Each row's output columns (see ``describe``), or ``{"error": why}``. Batches hold at most ``batch_size``
        rows and ``tokens`` padded tokens (None: rows only); ``workers`` processes (or ``auto``: one per core)
        featurize; ``interval`` (a coverage such as 0.9) adds conformal intervals or prediction sets."""
        if interval is not None and self.trust:
            self.trust.quantile(interval)  # a coverage it cannot give fails before any row is featurized
        return [result for prepared in self.prepared(RowChunks(rows), batch_size, resolve_workers(workers), tokens)
                for result in self.describe(prepared, interval)]

    def embed(self, rows: list[dict], side: str, batch_size: int = 256,
              tokens: int | None = BATCH_TOKENS) -> tuple[np.ndarray, dict[int, str]]:
        """A contrastive task's embeddings of one side (``head.query`` or ``head.candidate``) [N, E], NaN
        for rows that failed, with {row: why} for those."""
        if not self.head.ranks:
            raise ZooError(f"task {self.spec.name!r} has no embeddings to rank: its head is {self.spec.head.type}")
        column = 0 if side == self.head.query else 1
        prepared = self.prepare(0, rows, batch_size, tokens)
        out = None
        for index, _, raw in self.outputs(prepared):
            values = raw[:, column].float().cpu().numpy()
            out = np.full((len(rows), values.shape[1]), np.nan, np.float32) if out is None else out
            out[index] = values
        return (out if out is not None else np.zeros((len(rows), 0), np.float32)), prepared.errors


class ZooModel(Inference, nn.Module):
    def __init__(self, spec: TaskSpec):
        super().__init__()
        self.spec = spec
        dim = spec.fusion.params.get("dim", 128)
        self.encoders = nn.ModuleDict({n: build_encoder(e.type, **e.params) for n, e in spec.encoders.items()})
        self.project = nn.ModuleDict(
            {n: nn.Linear(self.encoders[i.encoder].out_dim, dim) for n, i in spec.inputs.items()}
        )
        self.fusion = FUSIONS[spec.fusion.type](list(spec.inputs), **spec.fusion.params)
        self.head = HEADS[spec.head.type](dim, targets=dict(spec.head.targets), **spec.head.params)
        for name, inp in spec.inputs.items():
            encoder = self.encoders[inp.encoder]
            if inp.transfer == "train":
                continue
            if hasattr(encoder, "set_transfer"):  # a pretrained encoder knows its own layers
                encoder.set_transfer(inp.transfer, top_k=inp.top_k, lora_r=inp.lora.r, lora_alpha=inp.lora.alpha,
                                     lora_dropout=inp.lora.dropout)
            elif inp.transfer == "frozen":
                encoder.requires_grad_(False)
            else:
                raise ZooError(f"task {spec.name!r}: key 'inputs.{name}.transfer': encoder "
                               f"{inp.encoder!r} has no pretrained layers to {inp.transfer}")

    def pretrained_frozen(self) -> set[str]:
        """Names of the frozen parameters of pretrained backbones: rebuilt from the installed package on load,
        so not saved (a LoRA or frozen-backbone artifact holds only what was trained)."""
        return {f"encoders.{e}.{k}" for e, enc in self.encoders.items() if hasattr(enc, "backbone")
                for k, p in enc.named_parameters() if not p.requires_grad}

    def train(self, mode: bool = True):
        super().train(mode)
        for inp in self.spec.inputs.values():  # a frozen backbone keeps its inference behaviour (dropout, BN)
            if inp.transfer == "frozen":
                self.encoders[inp.encoder].eval()
        return self

    # -- data path -------------------------------------------------------------------------------------
    def featurize(self, row: dict) -> dict[str, Any]:
        """One table row -> features per input (None where the cell is empty). Raises InputError."""
        (features, err), = self.featurize_rows([row])
        if err is not None:
            raise err
        return features

    def featurize_rows(self, rows: list[dict]) -> list[tuple[dict[str, Any] | None, InputError | None]]:
        """Each row's (features per input, None), or (None, the InputError of its first input that fails, or of
        every input being empty). Each input's cells go to its encoder together (``featurize_cells``), so an
        encoder with ``featurize_many`` runs them as a batch."""
        features: list[dict[str, Any]] = [{} for _ in rows]
        errors: list[InputError | None] = [None] * len(rows)
        empty: list[list[str]] = [[] for _ in rows]
        for name, inp in self.spec.inputs.items():
            todo = []
            for i, row in enumerate(rows):
                if is_missing(row.get(inp.column)):
                    features[i][name] = None
                    empty[i].append(inp.column)
                elif errors[i] is None:  # a row that failed already is not featurized further
                    todo.append(i)
            cells = featurize_cells(self.encoders[inp.encoder], [rows[i].get(inp.column) for i in todo])
            for i, cell in zip(todo, cells):
                if isinstance(cell, InputError):
                    errors[i] = InputError(cell.modality, f"column {inp.column!r}: {cell.why}")
                else:
                    features[i][name] = cell
        for i, columns in enumerate(empty):
            if len(columns) == len(self.spec.inputs):
                errors[i] = InputError("row", f"every input is empty ({', '.join(map(repr, dict.fromkeys(columns)))})")
        return [(None, err) if err is not None else (f, None) for f, err in zip(features, errors)]

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            name: self.encoders[inp.encoder].collate([f[name] for f in features])
            for name, inp in self.spec.inputs.items()
        }

    def targets(self, rows: list[dict]) -> np.ndarray:
        """Targets as the head reads them: [N, ...] floats, NaN where missing or not usable."""
        return self.head.read_targets(rows)

    # -- model -----------------------------------------------------------------------------------------
    def run(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, None]:
        """(raw head output, pooled fused embedding [B, dim], None: one model has no members)."""
        tokens = {}
        for name, inp in self.spec.inputs.items():
            t = self.encoders[inp.encoder](batch[name])
            tokens[name] = Tokens(self.project[name](t.x), t.mask)
        fused = self.fusion(tokens)
        return self.head(fused), fused.pooled, None

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.run(batch)[0]


class Ensemble(Inference, nn.Module):
    """Models of one task trained on one split from different seeds (``train.ensemble``). Their raw head outputs
    are averaged (logits for tags and classes; scaled values for regression, whose scaling the shared split
    makes the same) and decoded by the first member's head; rows are featurized once, by the first member."""

    def __init__(self, members: list[ZooModel]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.spec = members[0].spec

    @property
    def head(self) -> nn.Module:
        return self.members[0].head

    @property
    def encoders(self) -> nn.ModuleDict:
        return self.members[0].encoders

    def pretrained_frozen(self) -> set[str]:
        return {f"members.{k}.{name}" for k, m in enumerate(self.members) for name in m.pretrained_frozen()}

    def featurize(self, row: dict) -> dict[str, Any]:
        return self.members[0].featurize(row)

    def featurize_rows(self, rows: list[dict]) -> list[tuple[dict[str, Any] | None, InputError | None]]:
        return self.members[0].featurize_rows(rows)

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        return self.members[0].collate(features)

    def targets(self, rows: list[dict]) -> np.ndarray:
        return self.members[0].targets(rows)

    def run(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(the members' mean raw output, the first member's pooled embedding, each member's raw output)."""
        runs = [m.run(batch) for m in self.members]
        parts = [raw for raw, _, _ in runs]
        return torch.stack(parts).mean(0), runs[0][1], parts

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.run(batch)[0]


def build_model(spec: TaskSpec) -> ZooModel | Ensemble:
    """The untrained model a task entry (or a saved model's ``ModelSpec``) describes: one, or ``ensemble`` members."""
    if spec.ensemble == 1:
        return ZooModel(spec)
    return Ensemble([ZooModel(spec) for _ in range(spec.ensemble)])
