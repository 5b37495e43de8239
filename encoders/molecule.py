"""Molecules: RDKit SMILES -> atom and bond features -> directed message passing (D-MPNN) -> atom tokens.

Features are small integer categories (element, degree, charge, ...). A sum of per-category embeddings is
the same function as chemprop's linear layer over concatenated one-hots, without building the one-hots, so
featurization is a few RDKit calls per atom and the features stay compact in memory.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import torch
from rdkit import Chem, RDLogger
from torch import nn
from torch.nn import functional as F

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

    @property
    def size(self) -> int:  # one token per heavy atom
        return len(self.atoms)

    def elements(self) -> np.ndarray:
        return self.atoms[:, 0] - ATOM_OFFSETS[0]  # the first atom feature is the atomic number


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 80 else f"{text[:60]!r}... ({len(text):,} characters)"  # one short error line


def parse_smiles(smiles) -> Chem.Mol:
    if isinstance(smiles, Chem.Mol):
        return smiles
    if not isinstance(smiles, str):
        raise InputError("molecule", f"expected a SMILES string, got {type(smiles).__name__}")
    text = smiles.strip()
    if not text:
        raise InputError("molecule", "empty SMILES")
    if not text.isascii():  # SMILES are ASCII; RDKit cannot even take a string that is not valid UTF-8
        raise InputError("molecule", f"SMILES {_shown(text)} holds non-ASCII characters")
    if len(text) > MAX_SMILES_CHARS:
        raise InputError("molecule", f"SMILES of {len(text):,} characters is over the limit of {MAX_SMILES_CHARS:,}")
    mol = Chem.MolFromSmiles(text, sanitize=False)
    if mol is None:
        raise InputError("molecule", f"cannot parse SMILES {_shown(text)}")
    try:
        Chem.SanitizeMol(mol)
    except Exception as err:  # RDKit raises several unrelated exception types here
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError("molecule", f"invalid SMILES {_shown(text)}: {why}") from None
    n_atoms = mol.GetNumAtoms()
    if n_atoms == 0:
        raise InputError("molecule", f"SMILES {_shown(text)} has no atoms")
    if n_atoms > MAX_ATOMS:
        raise InputError("molecule", f"{n_atoms:,} atoms is over the limit of {MAX_ATOMS:,}")
    return mol


# Reading a molecule costs one Python -> C++ call per atom or bond and property (~0.3 us each, ~1.2 us for a
# getter that returns an enum), so the featurizer makes as few as the output allows: atoms and bonds are fetched
# by index (RDKit's GetAtoms() sequence wrapper costs twice as much), each property is read by map() over all of
# them into one list (one for all the molecules featurized together), and everything that follows from what was
# already read is computed with numpy, once for all of them: degree from the bond pairs, ring membership of atoms
# from that of bonds, atomic mass from the element unless an isotope is set. When the molecule was parsed here from
# SMILES text, the text also rules out chirality ("@"), double-bond stereo ("/", "\\") and isotopes ("[" and a
# digit), and a molecule without rings cannot hold an aromatic or ring atom or bond once sanitized, so those
# getters run only where they can return something other than zero.
_ATOM, _BOND = Chem.Atom, Chem.Bond
_MASS = np.array([Chem.GetPeriodicTable().GetAtomicWeight(z) for z in range(119)])
_MASS_FEATURE = (_MASS / 100.0).astype(np.float32)
# Bounds and offsets of the atom rows [atomic_num, degree, formal_charge, ...] in that order: the formal charge is
# read as is, so its bounds are -3..3 and its offset holds the +3 of the category.
_ATOM_LOW = np.zeros((len(ATOM_FEATURES), 1), dtype=np.int64)
_ATOM_LOW[2] = -3
_ATOM_HIGH = ATOM_MAX[:, None] + _ATOM_LOW
_ATOM_SHIFT = (ATOM_OFFSETS - _ATOM_LOW[:, 0])[:, None]
_BOND_HIGH, _BOND_SHIFT = BOND_MAX[:, None], BOND_OFFSETS[:, None]
_ISOTOPE, _AFTER_SMILES = re.compile(r"\[\d"), re.compile(r"[\s|]")


def _smiles_hints(text: str) -> dict:
    """What SMILES ``text`` (as ``parse_smiles`` reads it) can have set: chiral tags, bond stereo, isotopes."""
    if _AFTER_SMILES.search(text):  # anything after the SMILES (CXSMILES extensions) may set anything
        return {}
    return {"chirality": "@" in text, "stereo": "/" in text or "\\" in text,
            "isotopes": _ISOTOPE.search(text) is not None, "sanitized": True}


def featurize_mol(mol: Chem.Mol, *, chirality: bool = True, stereo: bool = True, isotopes: bool = True,
                  sanitized: bool = False) -> MolGraph:
    """Atom and bond categories of ``mol``. The keywords let a caller that knows more skip getters: False for
    ``chirality``, ``stereo`` or ``isotopes`` says that no atom has a chiral tag, no bond stereo and no atom an
    isotope label; ``sanitized`` says that ``mol`` passed ``Chem.SanitizeMol`` (so its ring information is set
    and aromatic atoms and bonds lie in rings). The defaults read everything."""
    return featurize_mols([(mol, dict(chirality=chirality, stereo=stereo, isotopes=isotopes, sanitized=sanitized))])[0]


def featurize_mols(mols: list[tuple[Chem.Mol, dict]]) -> list[MolGraph]:
    """``featurize_mol(mol, **hints)`` of each (mol, hints). RDKit is read molecule by molecule, but each property
    into one list for all of them, and everything after runs once on the arrays of all: numpy's per-call cost,
    paid per molecule, was as much as the RDKit getters of a drug-sized one. Each graph's arrays are views of
    those shared arrays."""
    atom_rows = [[] for _ in ATOM_FEATURES]  # each atom feature, for every atom of every molecule
    bond_rows = [[] for _ in range(6)]       # begin, end, then BOND_FEATURES, for every bond
    masses, n_atoms, n_bonds = [], [], []
    z, degree, charge, chiral, hs, hybrid, aromatic, atom_ring = atom_rows
    begin, end, kind, conjugated, bond_ring, bond_stereo = bond_rows
    for mol, hints in mols:
        n, m = mol.GetNumAtoms(), mol.GetNumBonds()
        sanitized = hints.get("sanitized", False)
        atoms = list(map(mol.GetAtomWithIdx, range(n)))
        bonds = list(map(mol.GetBondWithIdx, range(m)))
        rings = not sanitized or mol.GetRingInfo().NumRings() > 0
        begin += map(_BOND.GetBeginAtomIdx, bonds)
        end += map(_BOND.GetEndAtomIdx, bonds)
        kind += map(_BOND_TYPE.get, map(_BOND.GetBondTypeAsDouble, bonds), repeat(4, m))
        conjugated += map(_BOND.GetIsConjugated, bonds)
        bond_ring += map(_BOND.IsInRing, bonds) if rings else repeat(0, m)
        bond_stereo += map(_BOND.GetStereo, bonds) if hints.get("stereo", True) else repeat(0, m)
        z += map(_ATOM.GetAtomicNum, atoms)
        charge += map(_ATOM.GetFormalCharge, atoms)
        chiral += map(_ATOM.GetChiralTag, atoms) if hints.get("chirality", True) else repeat(0, n)
        hs += map(_ATOM.GetTotalNumHs, atoms)
        hybrid += map(_ATOM.GetHybridization, atoms)
        aromatic += map(_ATOM.GetIsAromatic, atoms) if rings else repeat(0, n)
        atom_ring += repeat(0, n) if sanitized else map(_ATOM.IsInRing, atoms)
        masses += map(_ATOM.GetMass, atoms) if hints.get("isotopes", True) else repeat(math.nan, n)
        n_atoms.append(n)
        n_bonds.append(m)
    degree += repeat(0, len(z))  # counted from the bonds below
    n_atoms, n_bonds = np.array(n_atoms, dtype=np.int64), np.array(n_bonds, dtype=np.int64)
    atom_ends, bond_ends = np.cumsum(n_atoms), np.cumsum(n_bonds)
    atoms = np.array(atom_rows, dtype=np.int64).reshape(len(ATOM_FEATURES), -1)
    bonds = np.array(bond_rows, dtype=np.int64).reshape(6, -1)
    pairs, bond_features = bonds[:2], bonds[2:]
    ends = pairs + np.repeat(atom_ends - n_atoms, n_bonds)  # the bonds' atoms among all molecules' atoms
    atoms[1] = np.bincount(ends.ravel(), minlength=atoms.shape[1])  # explicit neighbours: GetDegree
    # an atom is in a ring exactly when one of its bonds is (read from RDKit where a molecule is not sanitized)
    atoms[7, ends[:, bond_features[2] != 0]] = 1
    mass = np.array(masses, dtype=np.float64) / 100.0
    unset = np.isnan(mass)  # no isotope can be set: the element's standard atomic weight
    mass[unset] = _MASS_FEATURE[atoms[0, unset]]
    np.minimum(atoms, _ATOM_HIGH, out=atoms)
    np.maximum(atoms, _ATOM_LOW, out=atoms)
    atoms += _ATOM_SHIFT
    np.minimum(bond_features, _BOND_HIGH, out=bond_features)  # none is negative
    bond_features += _BOND_SHIFT
    atoms, mass = atoms.T.astype(np.int16, order="C"), mass.astype(np.float32)
    bond_features, pairs = bond_features.T.astype(np.int16, order="C"), pairs.T.astype(np.int32, order="C")
    spans = zip(atom_ends.tolist(), n_atoms.tolist(), bond_ends.tolist(), n_bonds.tolist())
    return [MolGraph(atoms=atoms[a - n : a], mass=mass[a - n : a], bonds=bond_features[b - m : b],
                     pairs=pairs[b - m : b]) for a, n, b, m in spans]


def _hints(raw) -> dict:
    """What ``parse_smiles`` having read ``raw`` tells ``featurize_mol``."""
    return _smiles_hints(raw.strip()) if isinstance(raw, str) else {}


@register_encoder("molecule-dmpnn")
class MoleculeDMPNN(nn.Module):
    """Directed message passing over bonds (Yang et al. 2019, chemprop), one token per heavy atom."""

    out_dim: int  # the width of its tokens (the Encoder contract)

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
        return featurize_mols([(parse_smiles(raw), _hints(raw))])[0]

    @staticmethod
    def featurize_many(raws: list) -> list[MolGraph | InputError]:
        """``featurize`` of each cell, or its InputError in its place. Cells go in runs of 64, each parsed whole and
        then featurized whole (``featurize_mols``): RDKit's parser and the featurizer each stay warm in the CPU's
        caches instead of evicting each other on every molecule, and numpy runs once per run, not per molecule."""
        out = []
        for start in range(0, len(raws), 64):
            run = raws[start : start + 64]
            mols = []
            for raw in run:
                try:
                    mols.append(parse_smiles(raw))
                except InputError as err:
                    mols.append(err)
            parsed = [(m, _hints(raw)) for raw, m in zip(run, mols) if not isinstance(m, InputError)]
            graphs = iter(featurize_mols(parsed))
            out += [m if isinstance(m, InputError) else next(graphs) for m in mols]
        return out

    @staticmethod
    def collate(graphs: list[MolGraph | None]) -> dict:
        present = [(i, g) for i, g in enumerate(graphs) if g is not None]
        sizes = np.array([len(g.atoms) for _, g in present], dtype=np.int64)
        n_bonds = np.array([len(g.pairs) for _, g in present], dtype=np.int64)
        bonds = concat([g.bonds for _, g in present], np.int64, len(BOND_FEATURES))
        pairs = concat([g.pairs for _, g in present], np.int64, 2)
        pairs += torch.as_tensor(np.repeat(np.cumsum(sizes) - sizes, n_bonds)).unsqueeze(1)  # atoms of the batch
        # Directed edge 2k runs begin->end of bond k and 2k+1 runs back, so an edge's reverse is index ^ 1 and
        # "bonds" holds one row per bond, k, for both of its edges.
        return {
            "atoms": concat([g.atoms for _, g in present], np.int64, len(ATOM_FEATURES)),
            "mass": concat([g.mass for _, g in present], np.float32).unsqueeze(-1),
            "bonds": bonds,
            "src": pairs.reshape(-1),
            "dst": pairs.flip(1).reshape(-1),
            **token_index([i for i, _ in present], sizes, len(graphs)),
        }

    def forward(self, batch: dict) -> Tokens:
        # Chemprop's D-MPNN: h0(u->v) = W_i [x_u, e_uv]; h(u->v) = relu(h0 + W_m (sum of h(w->u) - h(v->u))), from
        # relu(h0); each atom's token relu(W_o [x_v, sum of h(u->v)]). Sums of category embeddings are embedding
        # bags (no [atoms, 8, D] tensor); an atom is embedded once for all its edges, a bond once for its two; an
        # edge's reverse is its neighbour in its pair of rows, not a gather. The matrix products stay separate
        # from the sums they join (no addmm), so under bf16 autocast the edge states stay float32, as before.
        atoms, mass, src, dst = batch["atoms"], batch["mass"], batch["src"], batch["dst"]
        n_atoms, n_bonds, width = len(atoms), len(batch["bonds"]), self.out_dim
        atom_h = F.embedding_bag(atoms, self.atom_in.weight, mode="sum") + self.mass_in(mass)
        h0 = atom_h.index_select(0, src)
        h0.view(n_bonds, 2, width).add_(F.embedding_bag(batch["bonds"], self.bond_in.weight, mode="sum").unsqueeze(1))
        h = torch.relu(h0)
        for _ in range(self.depth - 1):
            incoming = h.new_zeros(n_atoms, width).index_add_(0, dst, h)
            message = incoming.index_select(0, src)  # less each edge's reverse: 2k and 2k+1 are each other's
            pair, h_pair = message.view(n_bonds, 2, width), h.view(n_bonds, 2, width)
            pair[:, 0].sub_(h_pair[:, 1])
            pair[:, 1].sub_(h_pair[:, 0])
            h = self.dropout(torch.relu_(h0 + self.message(message)))
        incoming = h.new_zeros(n_atoms, width).index_add_(0, dst, h)
        out = F.embedding_bag(atoms, self.atom_out.weight, mode="sum") + self.mass_out(mass) + self.update_out(incoming)
        out = torch.relu_(out)
        return pad_tokens(self.dropout(out), batch["row"], batch["pos"], batch["size"])
