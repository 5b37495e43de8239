"""Reproduce molecule-solubility: ESOL, random 80/10/10 split, one run per registry seed (0, 1, 2).

    python benchmarks/molecule_solubility.py [--data delaney-processed.csv] [--seeds 0 1 2] [--bundle]

Prints featurization throughput (molecules/s on one core), test RMSE per seed and the mean beside the
references in registry.yaml; writes benchmarks/results/molecule-solubility.json and a parity plot.
"""
import sys
from pathlib import Path

from zoo.cli import main

if __name__ == "__main__":  # the protocol (data, split, seeds, variants, baseline) is the registry's
    sys.exit(main(["bench", "molecule-solubility", "--results", str(Path(__file__).parent / "results"), *sys.argv[1:]]))
