"""Reproduce molecule-text-retrieval: ChEBI-20 text <-> molecule ranking with a contrastive (InfoNCE) head.

    python benchmarks/molecule_text_retrieval.py [--bundle]

Trained on the 3,301-pair validation split (10% held out for early stopping), scored on all 3,300 test
pairs: for each description, the rank of its own molecule among every test molecule (MRR, Hits@1,
Hits@10), and the reverse. Published Text2Mol/MolT5 numbers were trained on the 26,407-pair training
split, which is not available here, so they are not comparable and not listed.
"""
import sys
from pathlib import Path

from zoo.cli import main

if __name__ == "__main__":  # the protocol (data, split, seeds, variants, baseline) is the registry's
    sys.exit(main(["bench", "molecule-text-retrieval", "--results", str(Path(__file__).parent / "results"), *sys.argv[1:]]))
