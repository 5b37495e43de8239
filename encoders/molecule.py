"""Molecules: RDKit SMILES -> atom and bond features -> directed message passing (D-MPNN) -> atom tokens.

Features are small integer categories (element, degree, charge, ...). A sum of per-category embeddings is
the same function as chemprop's linear layer over concatenated one-hots, without building the one-hots, so
featurization is a few RDKit calls per atom and the features stay compact in memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from rdkit import Chem, RDLogger
from torch import nn

from encoders.base import Fraction, InputError, PositiveInt, Tokens, concat, pad_tokens, register_encoder, token_index

RDLogger.DisableLog("rdApp.*")  # parse failures are reported per row through InputError instead

# Bounds on one molecule, so a pasted polymer or protein is a per-row error rather than minutes of
# featurization (100,000 atoms take ~20 s) and a batch that does not fit in memory. The text bound is
# checked before parsing: OpenSMILES spends at most a few characters per atom.
MAX_ATOMS = 1000
MAX_SMILES_CHARS = 20 * MAX_ATOMS

# (name, number of categories) of each atom feature; the last category of each is "other or more".
ATOM_FEATURES = (
    ("atomic_num", 101), ("degree", 7), ("formal_charge", 7), ("chirality", 8),
    ("total_hs", 6), ("hybridization", 9), ("aromatic", 2), ("in_ring", 2),
)
BOND_FEATURES = (("bond_type", 5), ("conjugated", 2), ("in_ring", 2), ("stereo", 7))
_BOND_TYPE = {1.0: 0, 2.0: 1, 3.0: 2, 1.5: 3}


def _offsets(features) -> np.ndarray:
    sizes = [n for _, n in features]
    return np.cumsum([0] + sizes[:-1])


ATOM_OFFSETS, BOND_OFFSETS = _offsets(ATOM_FEATURES), _offsets(BOND_FEATURES)
ATOM_MAX = np.array([n - 1 for _, n in ATOM_FEATURES])
BOND_MAX = np.array([n - 1 for _, n in BOND_FEATURES])


@dataclass
class MolGraph:
    atoms: np.ndarray  # [n_atoms, len(ATOM_FEATURES)] int16 category indices, already offset
    mass: np.ndarray   # [n_atoms] float32, atomic mass / 100
    bonds: np.ndarray  # [n_bonds, len(BOND_FEATURES)] int16 category indices, already offset
    pairs: np.ndarray  # [n_bonds, 2] int32 begin and end atom of each bond


def parse_smiles(smiles) -> Chem.Mol:
    if isinstance(smiles, Chem.Mol):
        return smiles
    if not isinstance(smiles, str):
        raise InputError("molecule", f"expected a SMILES string, got {type(smiles).__name__}")
    text = smiles.strip()
    shown = repr(text) if len(text) <= 80 else f"{text[:60]!r}... ({len(text):,} characters)"  # one short error line
    if not text:
        raise InputError("molecule", "empty SMILES")
    if not text.isascii():  # SMILES are ASCII; RDKit cannot even take a string that is not valid UTF-8
        raise InputError("molecule", f"SMILES {shown} holds non-ASCII characters")
    if len(text) > MAX_SMILES_CHARS:
        raise InputError("molecule", f"SMILES of {len(text):,} characters is over the limit of {MAX_SMILES_CHARS:,}")
    mol = Chem.MolFromSmiles(text, sanitize=False)
    if mol is None:
        raise InputError("molecule", f"cannot parse SMILES {shown}")
    try:
        Chem.SanitizeMol(mol)
    except Exception as err:  # RDKit raises several unrelated exception types here
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError("molecule", f"invalid SMILES {shown}: {why}") from None
    if mol.GetNumAtoms() == 0:
        raise InputError("molecule", f"SMILES {shown} has no atoms")
    if mol.GetNumAtoms() > MAX_ATOMS:
        raise InputError("molecule", f"{mol.GetNumAtoms():,} atoms is over the limit of {MAX_ATOMS:,}")
    return mol


def featurize_mol(mol: Chem.Mol) -> MolGraph:
    # One pass over atoms and one over bonds: RDKit's sequence wrappers cost more than the getters.
    atom_rows = np.array(
        [(a.GetAtomicNum(), a.GetDegree(), a.GetFormalCharge() + 3, int(a.GetChiralTag()), a.GetTotalNumHs(),
          int(a.GetHybridization()), a.GetIsAromatic(), a.IsInRing(), a.GetMass()) for a in mol.GetAtoms()],
        dtype=np.float64,
    )
    bond_rows = np.array(
        [(_BOND_TYPE.get(b.GetBondTypeAsDouble(), 4), b.GetIsConjugated(), b.IsInRing(), int(b.GetStereo()),
          b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()],
        dtype=np.int64,
    ).reshape(-1, len(BOND_FEATURES) + 2)
    atoms = np.clip(atom_rows[:, :-1].astype(np.int64), 0, ATOM_MAX) + ATOM_OFFSETS
    bonds = np.clip(bond_rows[:, :-2], 0, BOND_MAX) + BOND_OFFSETS
    return MolGraph(
        atoms=atoms.astype(np.int16),
        mass=(atom_rows[:, -1] / 100.0).astype(np.float32),
        bonds=bonds.astype(np.int16),
        pairs=bond_rows[:, -2:].astype(np.int32),
    )


@register_encoder("molecule-dmpnn")
class MoleculeDMPNN(nn.Module):
    """Directed message passing over bonds (Yang et al. 2019, chemprop), one token per heavy atom."""

    def __init__(self, *, hidden: PositiveInt = 300, depth: PositiveInt = 3, dropout: Fraction = 0.0):
        super().__init__()
        self.depth, self.out_dim = depth, hidden
        n_atom_cats = sum(n for _, n in ATOM_FEATURES)
        n_bond_cats = sum(n for _, n in BOND_FEATURES)
        self.atom_in = nn.Embedding(n_atom_cats, hidden)
        self.bond_in = nn.Embedding(n_bond_cats, hidden)
        self.mass_in = nn.Linear(1, hidden)
        self.message = nn.Linear(hidden, hidden, bias=False)
        self.atom_out = nn.Embedding(n_atom_cats, hidden)
        self.mass_out = nn.Linear(1, hidden)
        self.update_out = nn.Linear(hidden, hidden, bias=False)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def featurize(raw) -> MolGraph:
        return featurize_mol(parse_smiles(raw))

    @staticmethod
    def collate(graphs: list[MolGraph | None]) -> dict:
        present = [(i, g) for i, g in enumerate(graphs) if g is not None]
        sizes = np.array([len(g.atoms) for _, g in present], dtype=np.int64)
        starts = np.cumsum(sizes) - sizes
        bonds = concat([g.bonds for _, g in present], np.int64, len(BOND_FEATURES))
        pairs = concat([g.pairs + s for (_, g), s in zip(present, starts)], np.int64, 2)
        # Directed edge 2k runs begin->end of bond k and 2k+1 runs back, so an edge's reverse is index ^ 1.
        return {
            "atoms": concat([g.atoms for _, g in present], np.int64, len(ATOM_FEATURES)),
            "mass": concat([g.mass for _, g in present], np.float32).unsqueeze(-1),
            "bonds": bonds.repeat_interleave(2, dim=0),
            "src": pairs.reshape(-1),
            "dst": pairs.flip(1).reshape(-1),
            **token_index([i for i, _ in present], sizes, len(graphs)),
        }

    def forward(self, batch: dict) -> Tokens:
        atoms, mass, src, dst = batch["atoms"], batch["mass"], batch["src"], batch["dst"]
        h0 = self.atom_in(atoms).sum(1)[src] + self.mass_in(mass)[src] + self.bond_in(batch["bonds"]).sum(1)
        h = torch.relu(h0)
        reverse = torch.arange(len(src), device=src.device) ^ 1
        for _ in range(self.depth - 1):
            incoming = torch.zeros(len(atoms), h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, dst, h)
            h = self.dropout(torch.relu(h0 + self.message(incoming[src] - h[reverse])))
        incoming = torch.zeros(len(atoms), h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, dst, h)
        out = torch.relu(self.atom_out(atoms).sum(1) + self.mass_out(mass) + self.update_out(incoming))
        return pad_tokens(self.dropout(out), batch["row"], batch["pos"], batch["size"])
