"""MassBank records as JSON lines (optionally gzipped), one MS/MS spectrum with its molecule per line, as in
``massbank_eawag_msms``: ``peaks`` = [[m/z, absolute intensity, relative intensity (0-999)], ...].

Each record becomes a row with the spectrum (m/z and relative intensity, for the spectrum encoder's
``mode: peaks``), the precursor ion (m/z, ion type, collision energy, for the precursor encoder), the molecule
(``smiles``, ``inchikey``) and ``inchikey_block``, the InChIKey's first 14 characters: the connectivity,
which stereoisomers share, so splitting by it keeps a compound's every spectrum on one side.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

# Copied as they are, beside the derived columns; useful to look at predictions, never used by the model.
KEPT = ("accession", "name", "formula", "exact_mass", "instrument_type", "ion_mode", "precursor_type",
        "collision_energy", "fragmentation_mode", "chemont", "license")


def read_massbank(path: str | Path) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"line {number}: not JSON ({err})") from None
            peaks = record.get("peaks") or []
            inchikey = record.get("inchikey") or ""
            mz = record.get("precursor_mz")
            rows.append({
                **{k: record.get(k) for k in KEPT},
                "spectrum": {"axis": [p[0] for p in peaks], "intensity": [p[2] for p in peaks]} if peaks else None,
                "precursor": {"mz": mz, "adduct": record.get("precursor_type"),
                              "collision_energy": record.get("collision_energy")} if mz else None,
                "precursor_mz": float(mz) if mz else None,
                "smiles": record.get("smiles"),
                "inchikey": inchikey or None,
                "inchikey_block": inchikey.split("-")[0] or None,
            })
    return rows
