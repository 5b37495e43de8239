"""Reproduce galaxy-morphology: the Galaxy Zoo 1 class of an SDSS galaxy from its gri colour image.

    python benchmarks/galaxy_morphology.py [--seeds 0 1 2] [--variants efficientnet-lite0-transfer vit-tiny-scratch] [--bundle]

Data: 2,021 SDSS cutouts (423x423 JPEG) from Galaxy Zoo 1, six classes (elliptical 600, spiral anticlockwise
436, clockwise 414, edge-on 400, merger 115, don't know 56; see the data set's SOURCE.md). Split: per class
70/10/20 (stratified), one run per registry seed. Side by side on the same splits: EfficientNet-Lite0 with its
ImageNet weights frozen (tokens computed once and cached; only the fusion and head train) against a ViT-tiny
trained from random weights at 64 px. No published number exists for this subset. Prints test macro-F1 and
accuracy; writes benchmarks/results/galaxy-morphology.json, a confusion matrix and learning curves.
"""
import sys
from pathlib import Path

from zoo.cli import main

if __name__ == "__main__":  # the protocol (data, split, seeds, variants) is the registry's
    sys.exit(main(["bench", "galaxy-morphology", "--results", str(Path(__file__).parent / "results"), *sys.argv[1:]]))
