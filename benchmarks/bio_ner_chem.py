"""Reproduce bio-ner-chem: BC5CDR chemical and disease mentions with all-MiniLM-L6-v2 and LoRA.

    python benchmarks/bio_ner_chem.py [--bundle]

Trained on train.tsv (10% held out for validation), scored on test.tsv by exact-span entity micro-F1 over
both types, with per-type F1 (the BioBERT references score each type as its own task).
"""
import sys
from pathlib import Path

from zoo.cli import main

if __name__ == "__main__":  # the protocol (data, split, seeds, variants, baseline) is the registry's
    sys.exit(main(["bench", "bio-ner-chem", "--results", str(Path(__file__).parent / "results"), *sys.argv[1:]]))
