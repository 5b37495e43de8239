"""Write examples/msms_spectra.csv (three MS/MS queries) and examples/msms_candidates.csv (ten textbook
molecules) for the README's msms-to-molecule command:

    zoo predict msms-to-molecule --input examples/msms_spectra.csv --candidates examples/msms_candidates.csv --top 3

The spectra are made up for the example, not measured: a few fragment m/z values of the kind these molecules
give (caffeine's 138 and 110 after losing methyl isocyanate and CO, paracetamol's 110 after losing ketene,
ibuprofen's 161 after losing CO2), with invented intensities. The precursor m/z are computed from the formulas.
"""
import csv
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

SPECTRA = [  # name (for the reader), [[m/z, relative intensity], ...], precursor
    ("caffeine", [[110.0713, 120], [138.0662, 999], [195.0877, 310]],
     {"mz": 195.0877, "adduct": "[M+H]+", "collision_energy": "30 % (nominal)"}),
    ("paracetamol", [[65.0386, 80], [93.0335, 150], [110.0600, 999], [152.0706, 420]],
     {"mz": 152.0706, "adduct": "[M+H]+", "collision_energy": "30 % (nominal)"}),
    ("ibuprofen", [[159.1179, 60], [161.1336, 999], [205.1234, 90]],
     {"mz": 205.1234, "adduct": "[M-H]-", "collision_energy": "15 % (nominal)"}),
]
CANDIDATES = [
    ("caffeine", "Cn1cnc2c1c(=O)n(C)c(=O)n2C"), ("theobromine", "Cn1cnc2c1c(=O)[nH]c(=O)n2C"),
    ("theophylline", "Cn1c2nc[nH]c2c(=O)n(C)c1=O"), ("paracetamol", "CC(=O)Nc1ccc(O)cc1"),
    ("phenacetin", "CCOc1ccc(NC(C)=O)cc1"), ("aspirin", "CC(=O)Oc1ccccc1C(=O)O"),
    ("salicylic acid", "OC(=O)c1ccccc1O"), ("ibuprofen", "CC(C)Cc1ccc(cc1)C(C)C(=O)O"),
    ("naproxen", "COc1ccc2cc(ccc2c1)C(C)C(=O)O"), ("nicotine", "CN1CCC[C@H]1c1cccnc1"),
]

if __name__ == "__main__":
    with open(HERE / "msms_spectra.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "spectrum", "precursor"])
        for name, peaks, precursor in SPECTRA:
            writer.writerow([name, json.dumps(peaks), json.dumps(precursor)])
    with open(HERE / "msms_candidates.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "smiles"])
        writer.writerows(CANDIDATES)
