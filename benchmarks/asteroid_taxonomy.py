"""Reproduce asteroid-taxonomy: the Bus-DeMeo class of an asteroid from its Vis-NIR reflectance spectrum.

    python benchmarks/asteroid_taxonomy.py [--seeds 0 1 2] [--bundle]

Data: Korda et al.'s 591 denoised spectra (450-2450 nm every 5 nm, reflectance 1 at 550 nm); the 560 of the 19
classes with at least 7 spectra are used. Split: per class 70/10/20 (stratified), one run per registry seed.
No published number exists for this subset, so a scikit-learn RandomForest runs beside ours on the same
resampled spectra and the same splits (fitted on training + validation rows: it has nothing to early-stop).
Prints test accuracy and macro-F1 for both; writes benchmarks/results/asteroid-taxonomy.json.
"""
import sys

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from harness import main


def random_forest(data, fit, test) -> np.ndarray:
    """500 trees, classes weighted by inverse frequency (macro-F1 counts every class alike) -> class indices."""
    x = np.stack([f["spectrum"].intensity for f in data.features])
    y = data.targets[:, 0]
    forest = RandomForestClassifier(n_estimators=500, class_weight="balanced", random_state=0, n_jobs=1)
    return forest.fit(x[fit], y[fit]).predict(x[test])


if __name__ == "__main__":
    sys.exit(main("asteroid-taxonomy", __doc__, baseline=("RandomForest", random_forest)))
