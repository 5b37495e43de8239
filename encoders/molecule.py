"""Molecules: RDKit SMILES -> atom and bond features -> directed message passing (D-MPNN) -> atom tokens.

Features are small integer categories (element, degree, charge, ...). A sum of per-category embeddings is
the same function as chemprop's linear layer over concatenated one-hots, without building the one-hots, so
featurization is a few RDKit calls per atom and the features stay compact in memory.
"""
from __future__ import annotations

import gc
import re
from contextlib import contextmanager
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


# Reading a molecule costs one Python -> C++ call per atom or bond and property (~0.1 us each, ~0.4 us for a
# getter that returns an enum, ~0.75 us to fetch an atom or bond by index), so the featurizer makes as few as the
# output allows. Atoms and bonds are fetched by index (RDKit's GetAtoms() sequence wrapper costs twice as much);
# the atoms and bonds of all the molecules featurized together go into one list each, and each property is read by
# one map() over that list straight into a numpy array: no Python work per molecule and property. Everything that
# follows from what was read is computed with numpy, once for all of them: degree from the bond pairs, ring
# membership of atoms from that of bonds, atomic mass from the element unless an isotope is set. When a molecule
# was parsed here from SMILES text, the text also rules out chirality ("@"), double-bond stereo ("/", "\\") and
# isotopes ("[" and a digit), so those getters run only for the molecules whose text can set them.
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
            "isotopes": _ISOTOPE.search(text) is not None}


def featurize_mol(mol: Chem.Mol, *, chirality: bool = True, stereo: bool = True, isotopes: bool = True) -> MolGraph:
    """Atom and bond categories of ``mol``. The keywords let a caller that knows more skip getters: False for
    ``chirality``, ``stereo`` or ``isotopes`` says that no atom has a chiral tag, no bond stereo and no atom an
    isotope label. The defaults read everything."""
    return featurize_mols([(mol, dict(chirality=chirality, stereo=stereo, isotopes=isotopes))])[0]


def _read(getter, objects: list, dtype=np.int64) -> np.ndarray:
    return np.fromiter(map(getter, objects), dtype=dtype, count=len(objects))


@contextmanager
def _collector_paused():
    """Python's cyclic garbage collector off for a block that allocates many short-lived objects: RDKit's atom and
    bond wrappers are tracked by the collector, so a few thousand of them set off collections that walk every
    object of the process (~200,000 once torch is imported), which cost the featurizer more than RDKit's getters
    (40 us a molecule became 60-100 at 64-256 molecules a call). The wrappers hold no cycles; the few a caught
    parse error makes are collected once the block ends."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def featurize_mols(mols: list[tuple[Chem.Mol, dict]]) -> list[MolGraph]:
    """``featurize_mol(mol, **hints)`` of each (mol, hints), read and computed for all of them at once (numpy's
    per-call cost, paid per molecule, was as much as the RDKit getters of a drug-sized one). Each graph's arrays
    are views of the shared arrays."""
    with _collector_paused():
        return _featurize_mols(mols)


def _featurize_mols(mols: list[tuple[Chem.Mol, dict]]) -> list[MolGraph]:
    atoms, bonds, n_atoms, n_bonds = [], [], [], []
    chiral, stereo, isotopes = [], [], []  # (first atom or bond, count) of the molecules that need a getter
    for mol, hints in mols:
        n, m = mol.GetNumAtoms(), mol.GetNumBonds()
        if hints.get("chirality", True):
            chiral.append((len(atoms), n))
        if hints.get("isotopes", True):
            isotopes.append((len(atoms), n))
        if hints.get("stereo", True):
            stereo.append((len(bonds), m))
        atoms += map(mol.GetAtomWithIdx, range(n))
        bonds += map(mol.GetBondWithIdx, range(m))
        n_atoms.append(n)
        n_bonds.append(m)
    n_atoms, n_bonds = np.array(n_atoms, dtype=np.int64), np.array(n_bonds, dtype=np.int64)
    atom_ends, bond_ends = np.cumsum(n_atoms), np.cumsum(n_bonds)
    features = np.zeros((len(ATOM_FEATURES), len(atoms)), dtype=np.int64)  # rows in ATOM_FEATURES' order
    features[0] = _read(_ATOM.GetAtomicNum, atoms)
    features[2] = _read(_ATOM.GetFormalCharge, atoms)
    features[4] = _read(_ATOM.GetTotalNumHs, atoms)
    features[5] = _read(_ATOM.GetHybridization, atoms)
    features[6] = _read(_ATOM.GetIsAromatic, atoms)
    mass = _MASS_FEATURE[features[0]]  # no isotope set: the standard atomic weight
    for first, n in chiral:
        features[3, first : first + n] = _read(_ATOM.GetChiralTag, atoms[first : first + n])
    for first, n in isotopes:
        mass[first : first + n] = _read(_ATOM.GetMass, atoms[first : first + n], np.float64) / 100.0
    bond_features = np.zeros((len(BOND_FEATURES), len(bonds)), dtype=np.int64)
    bond_features[0] = np.fromiter(map(_BOND_TYPE.get, map(_BOND.GetBondTypeAsDouble, bonds), repeat(4)),
                                   dtype=np.int64, count=len(bonds))
    bond_features[1] = _read(_BOND.GetIsConjugated, bonds)
    bond_features[2] = _read(_BOND.IsInRing, bonds)
    for first, m in stereo:
        bond_features[3, first : first + m] = _read(_BOND.GetStereo, bonds[first : first + m])
    pairs = np.stack([_read(_BOND.GetBeginAtomIdx, bonds), _read(_BOND.GetEndAtomIdx, bonds)])
    ends = pairs + np.repeat(atom_ends - n_atoms, n_bonds)  # the bonds' atoms among all molecules' atoms
    features[1] = np.bincount(ends.ravel(), minlength=len(atoms))  # explicit neighbours: GetDegree
    features[7, ends[:, bond_features[2] != 0]] = 1  # an atom is in a ring exactly when one of its bonds is
    np.minimum(features, _ATOM_HIGH, out=features)
    np.maximum(features, _ATOM_LOW, out=features)
    features += _ATOM_SHIFT
    np.minimum(bond_features, _BOND_HIGH, out=bond_features)  # none is negative
    bond_features += _BOND_SHIFT
    features, mass = features.T.astype(np.int16, order="C"), mass.astype(np.float32)
    bond_features, pairs = bond_features.T.astype(np.int16, order="C"), pairs.T.astype(np.int32, order="C")
    spans = zip(atom_ends.tolist(), n_atoms.tolist(), bond_ends.tolist(), n_bonds.tolist())
    return [MolGraph(atoms=features[a - n : a], mass=mass[a - n : a], bonds=bond_features[b - m : b],
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
        caches instead of evicting each other on every molecule, and numpy runs once per run, not per molecule.
        The garbage collector waits for the end of each run (``_collector_paused``)."""
        out = []
        for start in range(0, len(raws), 64):
            run = raws[start : start + 64]
            with _collector_paused():
                mols = []
                for raw in run:
                    try:
                        mols.append(parse_smiles(raw))
                    except InputError as err:
                        mols.append(err)
                parsed = [(m, _hints(raw)) for raw, m in zip(run, mols) if not isinstance(m, InputError)]
                graphs = iter(_featurize_mols(parsed))  # the collector is already paused
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
