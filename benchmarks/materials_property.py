"""Reproduce materials-property: Matbench perovskites, structure (+ its composition) -> formation energy.

    python benchmarks/materials_property.py [--folds 0] [--variants chgnet-transfer cgcnn-scratch] [--bundle]

Matbench-style 5-fold CV (KFold(5, shuffle=True, random_state=18012019)); ``--folds 0`` runs one fold.
Side by side on the same folds (the fusion ablation): the pretrained CHGNet transfer fused with the composition
(the registry's model), the CHGNet structure alone, the composition alone, and a from-scratch CGCNN.
Writes benchmarks/results/materials-property.json, a parity plot and learning curves.
"""
import sys
from pathlib import Path

from zoo.cli import main

if __name__ == "__main__":  # the protocol (data, split, seeds, variants, baseline) is the registry's
    sys.exit(main(["bench", "materials-property", "--results", str(Path(__file__).parent / "results"), *sys.argv[1:]]))
