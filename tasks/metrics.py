"""Metrics over targets with missing values: each target is scored on its present rows, then averaged."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn import metrics as skm


@dataclass(frozen=True)
class Metric:
    fn: Callable[[np.ndarray, np.ndarray], float]
    higher_is_better: bool


def _rmse(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.sqrt(skm.mean_squared_error(y, p)))


def _roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(skm.roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


METRICS = {
    "rmse": Metric(_rmse, higher_is_better=False),
    "mae": Metric(lambda y, p: float(skm.mean_absolute_error(y, p)), higher_is_better=False),
    "r2": Metric(lambda y, p: float(skm.r2_score(y, p)), higher_is_better=True),
    "roc_auc": Metric(_roc_auc, higher_is_better=True),
}


def score(name: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The metric averaged over target columns; NaN in ``y_true`` marks a missing target."""
    y_true, y_pred = np.asarray(y_true, float).reshape(len(y_true), -1), np.asarray(y_pred, float).reshape(len(y_pred), -1)
    per_target = []
    for j in range(y_true.shape[1]):
        present = ~np.isnan(y_true[:, j])
        if present.sum() >= 2:
            per_target.append(METRICS[name].fn(y_true[present, j], y_pred[present, j]))
    values = [v for v in per_target if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")
