"""Reproduce materials-bandgap: Matbench expt_gap, composition -> experimental band gap, MAE (eV).

    python benchmarks/materials_bandgap.py [--folds 0 1 2 3 4] [--bundle]

Matbench-style 5-fold CV (KFold(5, shuffle=True, random_state=18012019)); ``--folds 0`` runs one fold on a
CPU budget. Writes benchmarks/results/materials-bandgap.json and a parity plot.
"""
import sys
from pathlib import Path

from zoo.cli import main

if __name__ == "__main__":  # the protocol (data, split, seeds, variants, baseline) is the registry's
    sys.exit(main(["bench", "materials-bandgap", "--results", str(Path(__file__).parent / "results"), *sys.argv[1:]]))
