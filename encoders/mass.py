"""Masses for MS/MS retrieval, each -> one token: the precursor ion of a spectrum (query side) and the
monoisotopic mass of a candidate molecule (candidate side), through the same fixed Fourier features (sines and
cosines at periods from 0.1 to 2,000 Da, as NeRF-style position encodings), so an embedding can match the two
to a few mDa, which a mean of atom tokens cannot.

``precursor`` accepts a number (the m/z alone, up to 5,000; ion type and energy unknown); text ``"188.0818 [M+H]+"``; or
a dict (or JSON text of one) ``{"mz": 188.0818, "adduct": "[M+H]+", "collision_energy": 35}``, where
``adduct`` may also be called ``precursor_type`` and the energy may be text such as ``"35 % (nominal)"``.
Where the ion type is known the neutral mass M is derived from it ([M+H]+: m/z - 1.00728).

``molecule-mass`` accepts a SMILES string and takes its monoisotopic mass with RDKit.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import torch
from rdkit import Chem, RDLogger
from rdkit.Chem.rdMolDescriptors import CalcExactMolWt
from torch import nn

from encoders.base import Fraction, InputError, PositiveInt, Tokens, register_encoder

RDLogger.DisableLog("rdApp.*")

# Ion type -> m/z minus the neutral mass, for charge 1, from monoisotopic masses (a proton is 1.007276 Da, an
# electron 0.000549 Da). Each type also has its own learned embedding, which carries the polarity.
ADDUCTS = {
    "[M+H]+": 1.007276, "[M]+": -0.000549, "[M+Na]+": 22.989218, "[M+NH4]+": 18.033823, "[M+K]+": 38.963158,
    "[M+H-H2O]+": -17.003289, "[M-H]-": -1.007276, "[M]-": 0.000549, "[M+Cl]-": 34.969402, "[M+HCOO]-": 44.998201,
}
ADDUCT_INDEX = {name: i + 1 for i, name in enumerate(ADDUCTS)}  # 0: not given
MAX_MZ = 5000.0  # small molecules, singly charged: the Fourier periods reach 2,000 Da
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


@dataclass
class Mass:
    numbers: np.ndarray  # [3] float32: mass (neutral where known, else m/z), collision energy / 100, energy known
    adduct: int          # ADDUCT_INDEX, 0 where unknown (and for a molecule)

    @property
    def size(self) -> int:  # one token
        return 1


class _MassToken(nn.Module):
    """Shared by both encoders: Fourier features of the mass, with the other numbers and the ion type, through
    an MLP -> one token of width ``dim``, masked where the row has no value."""

    out_dim: int  # the width of its tokens (the Encoder contract)

    def __init__(self, *, dim: PositiveInt = 128, frequencies: PositiveInt = 32, hidden: PositiveInt = 128,
                 dropout: Fraction = 0.0):
        super().__init__()
        self.out_dim = dim
        omega = 2 * np.pi / np.geomspace(0.1, 2000.0, frequencies)
        self.register_buffer("omega", torch.as_tensor(omega, dtype=torch.float32), persistent=False)
        self.numbers = nn.Linear(2 * frequencies + 3, hidden)
        self.adduct = nn.Embedding(len(ADDUCTS) + 1, hidden)  # added to the numbers' layer
        self.out = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def collate(self, items: list[Mass | None]) -> dict:
        """Rows without a value get zeros and a False mask."""
        numbers = np.zeros((len(items), 3), np.float32)
        adduct = np.zeros(len(items), np.int64)
        for i, m in enumerate(items):
            if m is not None:
                numbers[i], adduct[i] = m.numbers, m.adduct
        present = torch.as_tensor([m is not None for m in items], dtype=torch.bool)
        return {"numbers": torch.as_tensor(numbers), "adduct": torch.as_tensor(adduct), "present": present}

    def forward(self, batch: dict) -> Tokens:
        mass, energy = batch["numbers"][:, :1], batch["numbers"][:, 1:]
        angle = mass * self.omega
        x = torch.cat([torch.sin(angle), torch.cos(angle), mass / 1000, energy], -1)
        h = self.out(self.numbers(x) + self.adduct(batch["adduct"]))
        return Tokens(h.unsqueeze(1), batch["present"].unsqueeze(1))


def _parse_precursor(raw) -> tuple[object, object, object]:
    """Any accepted input -> (m/z, ion type or None, collision energy or None), as given."""
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("{"):
            try:
                return _parse_precursor(json.loads(text))
            except json.JSONDecodeError as err:
                raise InputError("precursor", f"cannot parse JSON: {err}") from None
        mz, _, adduct = text.partition(" ")
        return mz, adduct.strip() or None, None
    if isinstance(raw, dict):
        if "mz" not in raw and "precursor_mz" not in raw:
            raise InputError("precursor", f"a precursor dict needs 'mz'; got keys {sorted(raw)}")
        return (raw.get("mz", raw.get("precursor_mz")), raw.get("adduct", raw.get("precursor_type")),
                raw.get("collision_energy"))
    return raw, None, None


@register_encoder("precursor")
class PrecursorEncoder(_MassToken):
    """A spectrum's precursor ion: m/z (as a neutral mass where the ion type says how), ion type, collision
    energy -> one token."""

    def featurize(self, raw) -> Mass:
        mz, adduct, energy = _parse_precursor(raw)
        try:
            mz = float(mz)
        except (TypeError, ValueError):
            raise InputError("precursor", f"m/z {mz!r} is not a number") from None
        if not 0 < mz <= MAX_MZ:  # NaN fails too
            raise InputError("precursor", f"m/z must be a number in (0, {MAX_MZ:g}], got {mz}")
        adduct = str(adduct).strip() if adduct is not None else None
        if adduct is not None and adduct not in ADDUCTS:
            raise InputError("precursor", f"unknown ion type {adduct!r}; known: {', '.join(ADDUCTS)}")
        found = _NUMBER.search(str(energy)) if energy is not None else None
        numbers = [mz - ADDUCTS[adduct] if adduct else mz, float(found.group()) / 100 if found else 0.0,
                   float(found is not None)]
        return Mass(np.array(numbers, np.float32), ADDUCT_INDEX.get(adduct, 0))


@register_encoder("molecule-mass")
class MoleculeMassEncoder(_MassToken):
    """A molecule's monoisotopic mass (RDKit, from SMILES) -> one token, to meet a precursor's neutral mass."""

    def featurize(self, raw) -> Mass:
        if not isinstance(raw, str) or not raw.strip():
            raise InputError("molecule", f"expected a SMILES string, got {type(raw).__name__ if raw else 'nothing'}")
        try:
            mol = Chem.MolFromSmiles(raw.strip())
        except UnicodeError:  # text that is not valid UTF-8 (bytes read with surrogateescape)
            mol = None
        if mol is None or mol.GetNumAtoms() == 0:
            raise InputError("molecule", f"cannot parse SMILES {raw.strip()[:60]!r}")
        return Mass(np.array([CalcExactMolWt(mol), 0.0, 0.0], np.float32), 0)
