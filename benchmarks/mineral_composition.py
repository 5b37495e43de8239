"""Reproduce mineral-composition: 15 mineral-composition targets from a laboratory Vis-NIR reflectance spectrum.

    python benchmarks/mineral_composition.py [--seeds 0 1 2] [--bundle]

Data: Korda et al.'s 674 denoised RELAB-derived spectra of minerals and meteorites (450-2450 nm every 5 nm) with
modal abundances of olivine, ortho- and clinopyroxene and plagioclase and their end-member chemistry, all as
fractions 0-1 (NaN where unknown: each target is trained and scored on the rows that have it). Split: random
70/10/20, one run per registry seed. No published number exists for this subset, so a scikit-learn
RandomForest runs beside ours on the same resampled spectra and the same splits (fitted on training +
validation rows). Prints test RMSE overall and per target for both; writes
benchmarks/results/mineral-composition.json and a parity plot.
"""
import sys

import numpy as np
from sklearn.ensemble import RandomForestRegressor

from harness import main


def random_forest(data, fit, test) -> np.ndarray:
    """One forest per target (scikit-learn's defaults: 100 trees), on the fitting rows that have that target."""
    x = np.stack([f["spectrum"].intensity for f in data.features])
    pred = np.empty((len(test), data.targets.shape[1]))
    for j, y in enumerate(data.targets.T):
        rows = fit[~np.isnan(y[fit])]
        pred[:, j] = RandomForestRegressor(random_state=0, n_jobs=1).fit(x[rows], y[rows]).predict(x[test])
    return pred


if __name__ == "__main__":
    sys.exit(main("mineral-composition", __doc__, baseline=("RandomForest", random_forest)))
