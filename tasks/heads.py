"""Task heads: the ``Head`` contract, the registry of head types, and the built-in heads.

``read_targets`` turns table rows into a float array (NaN where missing), ``forward`` gives the raw output
(standardised values, logits or embeddings), ``loss`` compares it with targets while ignoring missing ones,
``decode`` turns it into the user's units and ``describe`` into one row's output columns: ``outputs`` names them,
``numeric`` says which hold numbers (the others hold text, or JSON of a list). ``kind`` says what ``decode``
returns, ``metrics`` what scores it and ``ranks`` whether prediction ranks candidates: the engines read those
instead of asking which head a task has."""
from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal, Protocol

import numpy as np
import torch
from annotated_types import Ge
from torch import nn
from torch.nn import functional as F

from encoders.base import (ContractError, Fraction, PositiveFloat, PositiveInt, TypeRegistry, check_contract,
                           check_keyword)
from fusion.common import Fused
from tasks.metrics import METRICS
from tasks.ner import iob2_viterbi, spans, tag_names

# What a head's ``decode`` returns, by ``Head.kind``, and the members a head of that kind adds.
KINDS = {
    "values": "numbers in the targets' units [B, n_targets] (bench scores each target and draws a parity plot)",
    "probabilities": "a probability per target [B, n_targets]",
    "classes": "class probabilities [B, n_classes], the classes named by 'classes' (bench draws a confusion matrix)",
    "tags": "a tag id per token [B, T], NaN past a row's tokens, labels named by 'labels' (bench scores each label)",
    "embeddings": "L2-normalised embeddings [B, sides, E]",
}
KIND_MEMBERS = {"classes": ("classes",), "tags": ("labels",)}


class Head(Protocol):
    """A task head: a torch module built as ``cls(dim, *, targets, **params)``, ``dim`` the fusion's width and
    ``targets`` the entry's ``{output name: table column}`` (empty where the task has none); the other
    keyword-only params come from the registry entry, checked against their hints. B rows, in shapes:

    - ``read_targets(rows)`` -> float array [B, ...] (NaN where missing or unusable), what ``loss`` gets;
    - ``fit(y)``: sees the training targets before training (a regression head's standardisation);
    - ``forward(fused: Fused)`` -> raw output [B, ...] (standardised values, logits, embeddings);
    - ``loss(raw, target, mask)`` -> scalar, ignoring targets where ``mask`` [B, ...] is False;
    - ``decode(raw)`` -> the output in the user's terms, as ``kind`` says (``KINDS``); ``describe(value, features)``
      -> one row's output columns from its decoded value (and its features when ``describe_uses_features``);
    - ``outputs``: ``describe``'s column names; ``numeric``: those that hold numbers; ``targets``: output names.

    Class attributes: ``kind`` (a key of ``KINDS``: ``classes`` heads have ``classes``, ``tags`` heads ``labels``),
    ``metrics`` (names in ``tasks.METRICS`` that can score the decoded output: a task's metric is one of them, and
    test sets are scored by all, in this order), ``ranks`` (prediction ranks candidates: the head embeds a
    ``query`` side and a ``candidate`` side, each named by its first input, and cannot be ensembled) and
    ``describe_uses_features``."""

    kind: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]
    ranks: ClassVar[bool]
    describe_uses_features: ClassVar[bool]
    targets: list[str]
    outputs: list[str]
    numeric: list[str]

    def read_targets(self, rows: list[dict]) -> np.ndarray: ...

    def fit(self, y: np.ndarray) -> None: ...

    def forward(self, fused: Fused) -> torch.Tensor: ...

    def loss(self, raw: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...

    def decode(self, raw: torch.Tensor) -> torch.Tensor: ...

    def describe(self, value: np.ndarray, features: dict | None) -> dict: ...


def check_head(cls, what: str) -> None:
    check_contract(cls, Head, what)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if cls.kind not in KINDS:
        raise ContractError(f"{what}: class {name} has kind {cls.kind!r}; a head's kind is one of {', '.join(KINDS)}")
    metrics = cls.metrics
    if not isinstance(metrics, tuple) or not metrics or any(m not in METRICS for m in metrics):
        raise ContractError(f"{what}: class {name} has metrics {metrics!r}; expected a tuple of one or more of "
                            f"{', '.join(METRICS)}")
    needs = KIND_MEMBERS.get(cls.kind, ()) + (("query", "candidate") if cls.ranks else ())
    for member in needs:
        if not any(member in vars(k) or member in k.__dict__.get("__annotations__", {}) for k in cls.__mro__):
            why = "a ranking head" if member in ("query", "candidate") else f"a head of kind {cls.kind!r}"
            raise ContractError(f"{what}: class {name} has no {member!r}, a member of {why} (the Head contract, "
                                "tasks.heads.Head)")
    check_keyword(cls, what, "targets", "Head contract (tasks.heads.Head: cls(dim, *, targets, **params))")


HEADS = TypeRegistry("head", check_head, group="scizoo.heads")
register_head = HEADS.register  # class decorator: @register_head("name"), checked against ``Head``


def _mlp(dim: int, hidden: int, out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def scalar_targets(rows: list[dict], columns: list[str]) -> np.ndarray:
    """Targets [N, n_columns] as float, NaN where missing or not a number."""
    out = np.full((len(rows), len(columns)), np.nan)
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            try:
                out[i, j] = float(row.get(column))
            except (TypeError, ValueError):
                pass
    return out


class _ScalarOutputs:
    """Shared by heads with one number per target: read from columns, described as ``{target: value}``."""

    targets: list[str]
    columns: list[str]
    ranks = False
    describe_uses_features = False  # ``describe`` needs only the values (so prediction need not carry features)

    def read_targets(self, rows: list[dict]) -> np.ndarray:
        return scalar_targets(rows, self.columns)

    @property
    def outputs(self) -> list[str]:
        return self.targets

    @property
    def numeric(self) -> list[str]:
        return self.targets

    def describe(self, value: np.ndarray, features: dict) -> dict:
        return dict(zip(self.targets, map(float, value)))


@register_head("regression")
class RegressionHead(_ScalarOutputs, nn.Module):
    """Regression on standardised targets; the training set's mean and std are saved with the weights.

    ``loss: l1`` suits data scored by MAE with many exact values (band gaps of metals are all 0 eV).
    ``uncertainty: mve`` (mean-variance estimation, Nix & Weigend 1994) also predicts each row's spread and trains
    both by the negative log-likelihood of the loss's distribution: Gaussian for ``mse``, Laplace for ``l1``
    (whose maximum-likelihood centre is the median, as l1's). ``variance`` gives it in the target's units, and
    the trust summary scales it into ``sigma``."""

    kind = "values"
    metrics = ("rmse", "mae", "r2")

    def __init__(self, dim: int, *, targets: dict[str, str], hidden: PositiveInt = 256, dropout: Fraction = 0.0,
                 loss: Literal["mse", "l1"] = "mse", uncertainty: Literal["none", "mve"] = "none"):
        super().__init__()
        self.targets, self.columns = list(targets), list(targets.values())
        self.loss_fn = {"mse": F.mse_loss, "l1": F.l1_loss}[loss]
        self.laplace, self.mve = loss == "l1", uncertainty == "mve"
        self.mlp = _mlp(dim, hidden, len(self.targets) * (2 if self.mve else 1), dropout)
        self.register_buffer("mean", torch.zeros(len(self.targets)))
        self.register_buffer("std", torch.ones(len(self.targets)))

    def fit(self, y: np.ndarray) -> None:
        """Set the standardisation from training targets [N, n_targets] (NaN where missing)."""
        self.mean.copy_(torch.as_tensor(np.nanmean(y, 0)))
        self.std.copy_(torch.as_tensor(np.nan_to_num(np.nanstd(y, 0), nan=1.0)).clamp(min=1e-6))

    def forward(self, fused: Fused) -> torch.Tensor:
        return self.mlp(fused.pooled)  # [B, targets], then (mve) each target's scale before its softplus

    def loss(self, raw: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        z = (torch.where(mask, target, self.mean) - self.mean) / self.std
        n = len(self.targets)
        if not self.mve:
            return _masked_mean(self.loss_fn(raw, z, reduction="none"), mask)
        centre, scale = raw[:, :n], F.softplus(raw[:, n:]) + 1e-6  # Gaussian: the variance; Laplace: b
        if self.laplace:  # -log p up to a constant
            return _masked_mean(torch.log(scale) + (centre - z).abs() / scale, mask)
        return _masked_mean(F.gaussian_nll_loss(centre, z, scale, reduction="none"), mask)

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        return raw[:, : len(self.targets)] * self.std + self.mean

    def variance(self, raw: torch.Tensor) -> torch.Tensor | None:
        """Each row's predicted variance [B, targets] in the target's units squared (``mve``), else None."""
        if not self.mve:
            return None
        scale = F.softplus(raw[:, len(self.targets):]) + 1e-6
        return (2 * scale ** 2 if self.laplace else scale) * self.std ** 2  # a Laplace's variance is 2 b^2


@register_head("multilabel")
class MultiLabelHead(_ScalarOutputs, nn.Module):
    """Independent binary labels (one logit each), as in Tox21 or SIDER; decodes to probabilities."""

    kind = "probabilities"
    metrics = ("roc_auc",)

    def __init__(self, dim: int, *, targets: dict[str, str], hidden: PositiveInt = 256, dropout: Fraction = 0.0):
        super().__init__()
        self.targets, self.columns = list(targets), list(targets.values())
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


@register_head("token-classification")
class TokenClassificationHead(nn.Module):
    """IOB2 tags for each token of one input (words, for NER). The target column holds a list of tag
    strings per row; positions without a token come out NaN, so they are neither scored nor trained."""

    kind, metrics, ranks = "tags", ("entity_f1",), False
    describe_uses_features = True  # entity offsets come from the text's features
    targets: list[str]
    outputs: list[str]
    numeric: list[str]
    labels: list[str]

    def __init__(self, dim: int, *, targets: dict[str, str], labels: list[str], input: str | None = None,
                 dropout: Fraction = 0.1):
        super().__init__()
        self.targets, self.column, self.input = list(targets), next(iter(targets.values())), input
        self.outputs, self.numeric = ["entities", "warning"], []
        self.tags = tag_names(labels)
        self.labels = list(labels)
        self.classify = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, len(self.tags)))

    def read_targets(self, rows: list[dict]) -> np.ndarray:
        index = {t: i for i, t in enumerate(self.tags)}
        sequences = [row.get(self.column) for row in rows]
        out = np.full((len(rows), max((len(s) for s in sequences if isinstance(s, list)), default=1)), np.nan)
        for i, tags in enumerate(sequences):
            if isinstance(tags, list) and all(t in index for t in tags):
                out[i, : len(tags)] = [index[t] for t in tags]
        return out

    def fit(self, y: np.ndarray) -> None:
        pass

    def _tokens(self, fused: Fused) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.input or next(iter(fused.tokens))
        return fused.tokens[name], fused.masks[name]

    def forward(self, fused: Fused) -> torch.Tensor:
        x, mask = self._tokens(fused)
        return self.classify(x).masked_fill(~mask.unsqueeze(-1), float("nan"))

    def loss(self, raw: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target, mask = target[:, : raw.shape[1]], mask[:, : raw.shape[1]]
        raw, mask = raw[:, : target.shape[1]], mask & ~raw[:, : target.shape[1], 0].isnan()
        return F.cross_entropy(raw[mask], target[mask].long())

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        return iob2_viterbi(raw, self.tags)

    def confidence(self, raw: torch.Tensor, tags: np.ndarray) -> np.ndarray:
        """Each word's softmax probability of the tag decoded for it [B, T] (NaN past a row's words)."""
        p = raw.float().softmax(-1).cpu().numpy()
        index = np.nan_to_num(tags).astype(int)[..., None]
        return np.where(np.isnan(tags), np.nan, np.take_along_axis(p, index, -1)[..., 0])

    def describe(self, value: np.ndarray, features: dict, confidence: np.ndarray | None = None) -> dict:
        """Entity spans: word indices, character offsets into the text where it was given as a string, and (with
        each word's ``confidence``) the entity's: the least probable of its words' tags."""
        text = features[self.input or next(iter(features))]
        tags = [self.tags[int(t)] for t in value[~np.isnan(value)]]
        entities = []
        for first, last, kind in sorted(spans(tags)):
            entity = {"type": kind, "first_word": first, "last_word": last}
            if text.offsets[first, 0] >= 0:
                entity |= {"start": int(text.offsets[first, 0]), "end": int(text.offsets[last, 1])}
            if confidence is not None:
                entity["confidence"] = round(float(np.min(confidence[first : last + 1])), 4)
            entities.append(entity)
        out = {"entities": entities}
        if text.dropped_words:
            out["warning"] = f"text: {text.dropped_words} words past the maximum length were not tagged"
        return out


@register_head("contrastive")
class ContrastiveHead(nn.Module):
    """Two sides embedded into one space, trained with the symmetric InfoNCE loss (CLIP's): in a batch, each
    query's own candidate is the positive and every other row's is a negative. ``forward`` gives
    L2-normalised (query, candidate) embeddings [B, 2, E].

    A side may be several inputs (an MS/MS spectrum and its precursor ion; a molecule's graph and its mass):
    each is mean-pooled over its tokens, and the pooled vectors, with a flag per input saying whether the row
    has it, go through an MLP of ``hidden`` units. One input goes through a linear projection (or the same MLP
    when ``hidden`` > 0).

    The pair is the label, so no target column is needed. ``targets: {name: column}`` names a group column
    instead (a compound's InChIKey block), for data with several queries per candidate: rows of one group
    share their candidate, so the loss never takes another row of the group as a negative (those logits are
    masked out), and the retrieval metrics count each group's candidate once (see ``tasks.metrics.ranks``).
    Group ids are 1, 2, ... in order of the rows read (exact in float32 up to 2**24 groups); 0 is no group."""

    kind, metrics, ranks = "embeddings", ("mrr", "hits@1", "hits@10", "mrr_reverse"), True
    describe_uses_features = False
    targets: list[str]
    outputs: list[str]
    numeric: list[str]
    query: str      # the query side's first input
    candidate: str  # the candidate side's first input

    def __init__(self, dim: int, *, query: str | list[str], candidate: str | list[str],
                 targets: dict[str, str] | None = None, embedding: PositiveInt = 256,
                 temperature: PositiveFloat = 0.07, hidden: Annotated[int, Ge(0)] = 0):
        super().__init__()
        self.targets, self.outputs, self.numeric = [], ["matches", "margin"], ["margin"]  # as predict ranks them
        self.sides = [[query] if isinstance(query, str) else list(query),
                      [candidate] if isinstance(candidate, str) else list(candidate)]
        self.query, self.candidate = self.sides[0][0], self.sides[1][0]  # each side's first input names it
        self.group_column = next(iter((targets or {}).values()), None)

        def layer(names: list[str]) -> nn.Module:
            if len(names) == 1 and not hidden:
                return nn.Linear(dim, embedding)
            width = dim if len(names) == 1 else len(names) * (dim + 1)
            return nn.Sequential(nn.Linear(width, hidden or dim), nn.GELU(), nn.Linear(hidden or dim, embedding))

        # Keyed by the input's name for a one-input side, so older artifacts (one linear layer a side) still load.
        self.keys = ["+".join(names) for names in self.sides]
        self.project = nn.ModuleDict({key: layer(names) for key, names in zip(self.keys, self.sides)})
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)))

    def read_targets(self, rows: list[dict]) -> np.ndarray:
        """Group ids [N, 1] (NaN where the group cell is empty), or zeros without a group column."""
        if self.group_column is None:
            return np.zeros((len(rows), 1))
        keys = [row.get(self.group_column) for row in rows]
        present = [k is not None and str(k).strip() not in ("", "nan") for k in keys]
        ids: dict[str, int] = {}
        return np.array([[ids.setdefault(str(k), len(ids) + 1) if ok else np.nan] for k, ok in zip(keys, present)])

    def fit(self, y: np.ndarray) -> None:
        pass

    @staticmethod
    def _pool(fused: Fused, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, mask = fused.tokens[name], fused.masks[name].unsqueeze(-1)
        return (x * mask).sum(1) / mask.sum(1).clamp(min=1), mask.any(1).to(x.dtype)

    def _side(self, fused: Fused, key: str, names: list[str]) -> torch.Tensor:
        pooled = [self._pool(fused, name) for name in names]
        x = pooled[0][0] if len(pooled) == 1 else torch.cat([v for p in pooled for v in p], -1)
        return self.project[key](x)

    def forward(self, fused: Fused) -> torch.Tensor:
        sides = [self._side(fused, key, names) for key, names in zip(self.keys, self.sides)]
        return F.normalize(torch.stack(sides, 1), dim=-1)

    def loss(self, raw: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = self.log_scale.clamp(max=math.log(100)).exp() * raw[:, 0] @ raw[:, 1].T
        group = target[:, 0]
        others = (group[:, None] == group[None, :]) & (group[:, None] > 0)
        others.fill_diagonal_(False)
        logits = logits.masked_fill(others, float("-inf"))  # the same candidate under another row: no negative
        labels = torch.arange(len(raw), device=raw.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        return raw

    def describe(self, value: np.ndarray, features: dict) -> dict:
        return {}


@register_head("classification")
class ClassificationHead(nn.Module):
    """One class per row out of ``classes`` (softmax, cross-entropy). The target column holds class names; a
    row whose class is not listed has no target. ``decode`` gives the class probabilities [B, n_classes]
    (the metrics score their argmax); ``describe`` the most likely class, its probability and their entropy."""

    kind, metrics, ranks = "classes", ("macro_f1", "accuracy"), False
    describe_uses_features = False
    targets: list[str]
    outputs: list[str]
    numeric: list[str]
    classes: list[str]

    def __init__(self, dim: int, *, targets: dict[str, str], classes: list[str], hidden: PositiveInt = 256,
                 dropout: Fraction = 0.0):
        super().__init__()
        if len(targets) != 1 or len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError("a classification head takes one target and at least two distinct classes")
        self.targets, self.column, self.classes = list(targets), next(iter(targets.values())), list(classes)
        self.outputs = [self.targets[0], f"{self.targets[0]}_probability", f"{self.targets[0]}_entropy"]
        self.numeric = self.outputs[1:]
        self.mlp = _mlp(dim, hidden, len(classes), dropout)

    def read_targets(self, rows: list[dict]) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([[index.get(str(row.get(self.column)).strip(), np.nan)] for row in rows], dtype=float)

    def fit(self, y: np.ndarray) -> None:
        pass

    def forward(self, fused: Fused) -> torch.Tensor:
        return self.mlp(fused.pooled)

    def loss(self, raw: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        rows = mask[:, 0]
        if not rows.any():
            return raw.sum() * 0.0  # no targets in this batch: nothing to learn, but keep the graph
        return F.cross_entropy(raw[rows], target[rows, 0].long())

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.softmax(-1)

    def describe(self, value: np.ndarray, features: dict) -> dict:
        """The most likely class, its probability, and the entropy of all the probabilities (nats; 0 when one
        class holds them all, log(n_classes) when they are even)."""
        best = int(np.argmax(value))
        entropy = -float(np.sum(value * np.log(np.clip(value, 1e-12, 1))))
        return {self.targets[0]: self.classes[best], self.outputs[1]: float(value[best]), self.outputs[2]: entropy}

