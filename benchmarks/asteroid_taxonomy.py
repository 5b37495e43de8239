"""Reproduce asteroid-taxonomy: the Bus-DeMeo class of an asteroid from its Vis-NIR reflectance spectrum.

    python benchmarks/asteroid_taxonomy.py [--seeds 0 1 2] [--bundle]

Data: Korda et al.'s 591 denoised spectra (450-2450 nm every 5 nm, reflectance 1 at 550 nm); the 560 of the 19
classes with at least 7 spectra are used. Split: per class 70/10/20 (stratified), one run per registry seed.
No published number exists for this subset, so a scikit-learn RandomForest runs beside ours on the same
resampled spectra and the same splits (fitted on training + validation rows: it has nothing to early-stop).
Prints test accuracy and macro-F1 for both; writes benchmarks/results/asteroid-taxonomy.json.
"""
import sys
from pathlib import Path

from zoo.cli import main

if __name__ == "__main__":  # the protocol (data, split, seeds, variants, baseline) is the registry's
    sys.exit(main(["bench", "asteroid-taxonomy", "--results", str(Path(__file__).parent / "results"), *sys.argv[1:]]))
