"""Metrics over targets with missing values: each target is scored on its present rows, then averaged."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn import metrics as skm

from tasks.ner import entity_scores


@dataclass(frozen=True)
class Metric:
    fn: Callable[[np.ndarray, np.ndarray], float]
    higher_is_better: bool
    per_target: bool = True  # False: ``fn`` takes the whole arrays (sequences of tags, embedding pairs)


def _rmse(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.sqrt(skm.mean_squared_error(y, p)))


def _roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(skm.roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def tag_sequences(ids: np.ndarray) -> list[list[str]]:
    """Tag ids [N, W] (NaN past a row's end; 0 = O, 2k+1 = B-k, 2k+2 = I-k) -> IOB2 strings per row."""
    rows = []
    for row in np.asarray(ids, float):
        row = row[~np.isnan(row)].astype(int)
        rows.append(["O" if t == 0 else f"{'BI'[(t - 1) % 2]}-{(t - 1) // 2}" for t in row])
    return rows


def _entity_f1(y: np.ndarray, p: np.ndarray) -> float:
    gold = tag_sequences(y)
    predicted = [pred[: len(g)] + ["O"] * (len(g) - len(pred)) for g, pred in zip(gold, tag_sequences(p))]
    return entity_scores(gold, predicted)["micro"]["f1"]


def ranks(p: np.ndarray, reverse: bool = False) -> np.ndarray:
    """1-based rank of each row's own partner among all rows; ``p`` [N, 2, E] holds (query, candidate)
    embeddings, L2-normalised. ``reverse`` ranks queries for each candidate instead."""
    query, candidate = (p[:, 1], p[:, 0]) if reverse else (p[:, 0], p[:, 1])
    similarity = query @ candidate.T
    own = np.diag(similarity)
    return 1 + (similarity > own[:, None]).sum(1)


def class_labels(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted class indices of the rows with a target; ``y`` [N, 1] holds class indices (NaN where
    missing), ``p`` class probabilities [N, C] (scored by their argmax) or class indices [N] or [N, 1]."""
    y = np.asarray(y, float).reshape(len(y), -1)[:, 0]
    p = np.asarray(p, float)
    predicted = p.argmax(1) if p.ndim == 2 and p.shape[1] > 1 else p.reshape(-1)
    present = ~np.isnan(y)
    return y[present].astype(int), predicted[present].astype(int)


def _macro_f1(y: np.ndarray, p: np.ndarray) -> float:
    """F1 averaged over the classes that are true or predicted in the set (sklearn's ``average="macro"``)."""
    return float(skm.f1_score(*class_labels(y, p), average="macro", zero_division=0))


METRICS = {
    "rmse": Metric(_rmse, higher_is_better=False),
    "mae": Metric(lambda y, p: float(skm.mean_absolute_error(y, p)), higher_is_better=False),
    "r2": Metric(lambda y, p: float(skm.r2_score(y, p)), higher_is_better=True),
    "roc_auc": Metric(_roc_auc, higher_is_better=True),
    "entity_f1": Metric(_entity_f1, higher_is_better=True, per_target=False),
    "mrr": Metric(lambda y, p: float(np.mean(1 / ranks(p))), higher_is_better=True, per_target=False),
    "mrr_reverse": Metric(lambda y, p: float(np.mean(1 / ranks(p, True))), higher_is_better=True, per_target=False),
    "hits@1": Metric(lambda y, p: float(np.mean(ranks(p) <= 1)), higher_is_better=True, per_target=False),
    "hits@10": Metric(lambda y, p: float(np.mean(ranks(p) <= 10)), higher_is_better=True, per_target=False),
    "accuracy": Metric(lambda y, p: float(skm.accuracy_score(*class_labels(y, p))), higher_is_better=True,
                       per_target=False),
    "macro_f1": Metric(_macro_f1, higher_is_better=True, per_target=False),
}


def score(name: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The metric averaged over target columns; NaN in ``y_true`` marks a missing target."""
    if not METRICS[name].per_target:
        return METRICS[name].fn(np.asarray(y_true, float), np.asarray(y_pred, float))
    y_true, y_pred = np.asarray(y_true, float).reshape(len(y_true), -1), np.asarray(y_pred, float).reshape(len(y_pred), -1)
    per_target = []
    for j in range(y_true.shape[1]):
        present = ~np.isnan(y_true[:, j])
        if present.sum() >= 2:
            per_target.append(METRICS[name].fn(y_true[present, j], y_pred[present, j]))
    values = [v for v in per_target if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")
