"""Reproduce bio-ner: JNLPBA 2004 entities (protein, DNA, RNA, cell_line, cell_type) with all-MiniLM-L6-v2.

    python benchmarks/bio_ner.py [--variants lora full-finetune] [--bundle]

Trained on the 2,000-abstract standoff training set (split into sentences and words here; 10% held out for
validation), scored on the official test set (test.tsv) by exact-span entity micro-F1, with per-type F1.
Side by side: LoRA (the registry's: a small trained delta on the frozen backbone, the artifact holds only
that) and a full fine-tune of the backbone (the artifact holds the whole model).
"""
import sys
from pathlib import Path

from zoo.cli import main

if __name__ == "__main__":  # the protocol (data, split, seeds, variants, baseline) is the registry's
    sys.exit(main(["bench", "bio-ner", "--results", str(Path(__file__).parent / "results"), *sys.argv[1:]]))
