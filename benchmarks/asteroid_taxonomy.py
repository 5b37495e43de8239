"""Reproduce asteroid-taxonomy: the Bus-DeMeo class of an asteroid from its Vis-NIR reflectance spectrum.

    python benchmarks/asteroid_taxonomy.py [--seeds 0 1 2] [--bundle]

Data: Korda et al.'s 591 denoised spectra (450-2450 nm every 5 nm, reflectance 1 at 550 nm); the 560 of the 19
classes with at least 7 spectra are used. Split: per class 70/10/20 (stratified), one run per registry seed.
No published number exists for this subset, so a scikit-learn RandomForest runs beside ours on the same
resampled spectra and the same splits (fitted on training + validation rows: it has nothing to early-stop).
Prints test accuracy and macro-F1 for both; writes benchmarks/results/asteroid-taxonomy.json.
"""
import sys

from harness import main
from tasks.baselines import BASELINES

if __name__ == "__main__":
    sys.exit(main("asteroid-taxonomy", __doc__, baseline=("RandomForest", BASELINES["spectrum-random-forest-classifier"])))
