"""Reproduce materials-property: Matbench perovskites, structure (+ its composition) -> formation energy.

    python benchmarks/materials_property.py [--folds 0] [--variants chgnet-transfer cgcnn-scratch] [--bundle]

Matbench-style 5-fold CV (KFold(5, shuffle=True, random_state=18012019)); ``--folds 0`` runs one fold.
Side by side on the same folds: the pretrained CHGNet transfer (the registry's model), a from-scratch
CGCNN, and the composition alone. Writes benchmarks/results/materials-property.json and a parity plot.
"""
import sys

from harness import main

VARIANTS = {
    "chgnet-transfer": {},
    "cgcnn-scratch": {"inputs.structure.encoder": "crystal-cgcnn"},
    "composition-only": {"inputs": {"composition": {"column": "structure", "encoder": "composition"}}},
}

if __name__ == "__main__":
    sys.exit(main("materials-property", __doc__, VARIANTS, seed_name="fold"))
