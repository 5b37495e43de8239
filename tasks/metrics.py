"""Metrics over targets with missing values: each target is scored on its present rows, then averaged.

scikit-learn is imported when a metric is first computed, not with this module: loading a model for prediction
imports the task families but scores nothing, and scikit-learn pulls in scipy and pandas (about a second).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from tasks.ner import entity_scores


@dataclass(frozen=True)
class Metric:
    fn: Callable[[np.ndarray, np.ndarray], float]
    higher_is_better: bool
    per_target: bool = True  # False: ``fn`` takes the whole arrays (sequences of tags, embedding pairs)


def _sklearn():
    from sklearn import metrics

    return metrics


def _rmse(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.sqrt(_sklearn().mean_squared_error(y, p)))


def _roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(_sklearn().roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


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


def groups_of(y: np.ndarray) -> np.ndarray:
    """Each row's group id from a contrastive head's targets: rows with the same positive id share one candidate
    (spectra of one compound); 0 (or no targets) means a group of its own, as for plain pairs."""
    y = np.asarray(y, float).reshape(len(y), -1)[:, 0] if np.size(y) else np.zeros(0)
    return np.where(y > 0, y, -1.0 - np.arange(len(y)))


def ranks(p: np.ndarray, reverse: bool = False, groups: np.ndarray | None = None) -> np.ndarray:
    """1-based rank of each row's own partner among the distinct candidates; ``p`` [N, 2, E] holds (query,
    candidate) embeddings, L2-normalised. With ``groups`` (see ``groups_of``), rows of one group share one
    candidate: it is counted once, and never as a negative for the group's other queries. ``reverse`` ranks
    the queries for each row's candidate instead, leaving out the other queries of its group."""
    groups = np.arange(len(p)) if groups is None else np.asarray(groups)
    query, candidate = p[:, 0], p[:, 1]
    same = groups[:, None] == groups[None, :]
    if reverse:
        similarity = candidate @ query.T  # [row's candidate, query]
        own = np.diag(similarity)
        return 1 + ((similarity > own[:, None]) & ~same).sum(1)
    _, first = np.unique(groups, return_index=True)  # one candidate per group (its duplicates embed alike)
    similarity = query @ candidate[first].T  # [query, distinct candidate]
    own = (query * candidate).sum(1)
    return 1 + ((similarity > own[:, None]) & (groups[first][None, :] != groups[:, None])).sum(1)


def _ranks(y: np.ndarray, p: np.ndarray, reverse: bool = False) -> np.ndarray:
    return ranks(p, reverse, groups_of(y))


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
    return float(_sklearn().f1_score(*class_labels(y, p), average="macro", zero_division=0))


METRICS = {
    "rmse": Metric(_rmse, higher_is_better=False),
    "mae": Metric(lambda y, p: float(_sklearn().mean_absolute_error(y, p)), higher_is_better=False),
    "r2": Metric(lambda y, p: float(_sklearn().r2_score(y, p)), higher_is_better=True),
    "roc_auc": Metric(_roc_auc, higher_is_better=True),
    "entity_f1": Metric(_entity_f1, higher_is_better=True, per_target=False),
    "mrr": Metric(lambda y, p: float(np.mean(1 / _ranks(y, p))), higher_is_better=True, per_target=False),
    "mrr_reverse": Metric(lambda y, p: float(np.mean(1 / _ranks(y, p, True))), higher_is_better=True,
                          per_target=False),
    "hits@1": Metric(lambda y, p: float(np.mean(_ranks(y, p) <= 1)), higher_is_better=True, per_target=False),
    "hits@10": Metric(lambda y, p: float(np.mean(_ranks(y, p) <= 10)), higher_is_better=True, per_target=False),
    "accuracy": Metric(lambda y, p: float(_sklearn().accuracy_score(*class_labels(y, p))), higher_is_better=True,
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
