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
from pathlib import Path

from zoo.cli import main

if __name__ == "__main__":  # the protocol (data, split, seeds, variants, baseline) is the registry's
    sys.exit(main(["bench", "mineral-composition", "--results", str(Path(__file__).parent / "results"), *sys.argv[1:]]))
