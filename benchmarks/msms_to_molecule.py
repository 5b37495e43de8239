"""Reproduce msms-to-molecule: rank candidate molecules for an MS/MS spectrum (MassBank Eawag, 16,424 spectra
of 1,327 compounds), contrastive spectrum encoder against the D-MPNN molecule encoder.

    ZOO_DATA=../shared/data python benchmarks/msms_to_molecule.py [--seeds 0 1 2] [--bundle]
        [--variants spectrum+precursor spectrum-only]

Split by compound (the InChIKey's first block; 80/10/10 of the compounds, one run per registry seed), so no
compound is on both sides. For each test spectrum the candidates are the distinct test molecules (~130): top-1
and top-10 accuracy (hits@1, hits@10) and MRR, each compound counted once however many spectra it has.
The fusion ablation runs the query as spectrum + precursor ion (the registry's model) against the spectrum
alone (the candidate side is the molecule's graph and mass in both).
Baseline, on the same rows and splits: the nearest training spectrum by cosine of the binned spectra, whose
molecule ranks the candidates by Morgan-fingerprint Tanimoto (tasks.baselines.spectrum_nearest_analogue).
No published numbers exist for this subset (MassSpecGym's are on other data and candidate sets).
Writes benchmarks/results/msms-to-molecule.json.
"""
import sys
from pathlib import Path

from zoo.cli import main

if __name__ == "__main__":  # the protocol (data, split, seeds, variants, baseline) is the registry's
    sys.exit(main(["bench", "msms-to-molecule", "--results", str(Path(__file__).parent / "results"), *sys.argv[1:]]))
