"""Spectral data sets stored as one ``.npz`` of spectra on a shared axis (the Korda et al. asteroid and
meteorite/mineral reflectance sets): read without pickle into rows for the spectrum encoder."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def read_spectra_npz(path: str | Path) -> list[dict]:
    """``spectra`` [N, P] on ``wavelengths_nm`` [P] -> rows ``{"spectrum": {"axis", "intensity"}, ...}``.

    Every other array with N rows becomes columns: a 1-D one under its own name (``taxonomy_class``), a 2-D one
    column by column under the names in its ``<name>_key`` array (``labels`` and ``labels_key``: the mineral
    set's 15 composition targets), NaN kept as a missing target.
    """
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    spectra, axis = arrays.pop("spectra"), arrays.pop("wavelengths_nm")
    columns: dict[str, np.ndarray] = {}
    for name, values in arrays.items():
        if len(values) != len(spectra) or name.endswith("_key"):
            continue
        if values.ndim == 1:
            columns[name] = values
        else:
            columns |= {str(key): values[:, j] for j, key in enumerate(arrays[f"{name}_key"])}
    return [{"spectrum": {"axis": axis, "intensity": spectrum}, **{k: v[i].item() for k, v in columns.items()}}
            for i, spectrum in enumerate(spectra)]
