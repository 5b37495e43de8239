"""Reference models a benchmark runs beside ours on the same featurized rows and the same split, for data
sets without published numbers. A registry task names one with ``bench: {baseline: NAME}``.

Each is ``(features, targets, fit, test) -> test predictions``: ``features`` are the featurized rows (one
dict of modality -> feature per row), ``targets`` [N, n_targets], ``fit`` and ``test`` row indices; the
predictions take the form the task's head decodes to (values [N, targets], or class indices). A baseline
fits on training and validation rows together: it has nothing to early-stop.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

Baseline = Callable[[list[dict], np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _spectra(features: list[dict]) -> np.ndarray:
    return np.stack([f["spectrum"].intensity for f in features])


def spectrum_forest_classifier(features, targets, fit, test) -> np.ndarray:
    """500 trees on the resampled spectrum, classes weighted by inverse frequency (macro-F1 counts every class
    alike) -> class indices."""
    forest = RandomForestClassifier(n_estimators=500, class_weight="balanced", random_state=0, n_jobs=1)
    return forest.fit(_spectra(features)[fit], targets[fit, 0]).predict(_spectra(features)[test])


def spectrum_forest_regressor(features, targets, fit, test) -> np.ndarray:
    """One forest per target (scikit-learn's defaults: 100 trees) on the resampled spectrum, fitted on the rows
    that have that target."""
    x = _spectra(features)
    pred = np.empty((len(test), targets.shape[1]))
    for j, y in enumerate(targets.T):
        rows = fit[~np.isnan(y[fit])]
        pred[:, j] = RandomForestRegressor(random_state=0, n_jobs=1).fit(x[rows], y[rows]).predict(x[test])
    return pred


BASELINES: dict[str, Baseline] = {
    "spectrum-random-forest-classifier": spectrum_forest_classifier,
    "spectrum-random-forest-regressor": spectrum_forest_regressor,
}
