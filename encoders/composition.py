"""Compositions: a formula (or pymatgen Composition) -> one token per element.

Each element token is a learned embedding of the element plus a projection of its tabulated properties
(pymatgen ``Element``: group, row, electronegativity, radius, mass, ionisation energy, ...), so rare elements
borrow strength from chemically similar ones, plus an encoding of its fraction. Self-attention lets the
elements of a compound see each other, as in Roost and CrabNet. With ``chgnet_elements`` the properties also
hold CHGNet's learned element embedding (trained on 1.5M Materials Project DFT calculations, read from the
installed wheel): a pretrained element representation, as CrabNet takes mat2vec's. With ``oxidation`` each token
also holds the compound's charge balance (``charge_balance``): whether common oxidation states can make it
neutral, and the element's state if so.
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from encoders.base import Fraction, InputError, PositiveInt, Tokens, concat, pad_tokens, register_encoder, token_index
from encoders.crystal import STRUCTURE_SUFFIXES, read_structure

MAX_Z = 103  # up to lawrencium; pymatgen's tables are sparse beyond
MAX_FORMULA_CHARS = 1000  # longer text is no formula, and pymatgen's parser slows down on it


_SHELLS = {"s": 2, "p": 6, "d": 10, "f": 14}


def _valence(element) -> list[int]:
    """Magpie's valence counts: electrons in the s, p, d and f orbitals outside the noble-gas core, their sum,
    the empty places in each partly filled orbital, and their sum (from pymatgen's ``electronic_structure``,
    e.g. ``[Ar].3d10.4s2.4p1``)."""
    held = dict.fromkeys(_SHELLS, 0)
    for orbital in element.electronic_structure.split("."):
        if not orbital.startswith("["):  # the core, e.g. [Ar]
            label = orbital.lstrip("0123456789")  # 3d10 -> d10
            held[label[0]] += int(label[1:])
    empty = [(_SHELLS[k] - n) if n else 0 for k, n in held.items()]
    return [*held.values(), sum(held.values()), *empty, sum(empty)]


@functools.cache
def element_table(magpie: bool = False) -> np.ndarray:
    """[MAX_Z + 1, n_properties] standardised element properties; row 0 is unused, missing values are 0. With
    ``magpie`` also the valence-electron counts and the melting point and molar volume that Magpie's
    composition features are made of (Ward et al. 2016)."""
    from pymatgen.core import Element

    def props(z: int) -> list[float]:
        e = Element.from_Z(z)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen warns for every property it lacks
            values = [z, e.group, e.row, e.X, e.atomic_radius, float(e.atomic_mass), e.mendeleev_no,
                      e.ionization_energy, e.electron_affinity, float(e.is_metal),
                      *(float(e.block == b) for b in "spdf")]
            if magpie:
                values += [*_valence(e), e.melting_point, e.molar_volume]
        return [float(v) if v is not None and math.isfinite(float(v)) else math.nan for v in values]

    table = np.array([props(z) for z in range(1, MAX_Z + 1)], dtype=np.float64)
    table = (table - np.nanmean(table, 0)) / (np.nanstd(table, 0) + 1e-8)
    return np.vstack([np.zeros((1, table.shape[1])), np.nan_to_num(table, nan=0.0)]).astype(np.float32)


@functools.cache
def chgnet_element_table(version: str) -> np.ndarray:
    """[MAX_Z + 1, 64] CHGNet's element embedding, standardised; zero for row 0 and past its 94 elements."""
    from encoders.crystal import chgnet_backbone

    weights = chgnet_backbone(version).atom_embedding.embedding.weight.detach().numpy().astype(np.float64)
    weights = (weights - weights.mean(0)) / (weights.std(0) + 1e-8)
    table = np.zeros((MAX_Z + 1, weights.shape[1]), dtype=np.float32)
    table[1:len(weights) + 1] = weights
    return table


@functools.cache
def _common_oxidation_states(z: int) -> tuple[int, ...]:
    from pymatgen.core import Element

    return Element.from_Z(z).common_oxidation_states or (0,)  # noble gases have none


MAX_ASSIGNMENTS = 4096  # oxidation-state combinations tried per compound; more count as not charge-balanced


def charge_balance(z: np.ndarray, fraction: np.ndarray) -> np.ndarray:
    """[n_elements, 2]: each element's mean oxidation state over the ways of giving every element one of its common
    oxidation states (pymatgen's) so that the compound is neutral, and 1 where there is such a way (the same for
    every element of the compound); zeros when there is none. An ionic compound can balance, an intermetallic
    mostly cannot: the chemist's first guess at metal or insulator, as matminer's ``IonProperty`` gives it.
    Fractional formulas (``Al0.01Cd0.99Sb0.01Te0.99``) balance as they are, where pymatgen's guesser wants integers."""
    states = [_common_oxidation_states(int(k)) for k in z]
    if math.prod(map(len, states)) > MAX_ASSIGNMENTS:
        return np.zeros((len(z), 2), np.float32)
    grid = np.array(np.meshgrid(*states, indexing="ij")).reshape(len(z), -1).T  # [assignments, n_elements]
    neutral = grid[np.abs(grid @ fraction.astype(np.float64)) < 1e-3]
    if not len(neutral):
        return np.zeros((len(z), 2), np.float32)
    return np.stack([neutral.mean(0), np.ones(len(z))], 1).astype(np.float32)


@dataclass
class CompositionFeatures:
    z: np.ndarray          # [n_elements] atomic numbers
    fraction: np.ndarray   # [n_elements] atomic fractions, summing to 1
    oxidation: np.ndarray  # [n_elements, 2] charge_balance (``oxidation: true``), else [n_elements, 0]

    @property
    def size(self) -> int:  # one token per element
        return len(self.z)

    def elements(self) -> np.ndarray:
        return self.z


def parse_composition(raw):
    """A formula or Composition; a crystal structure (object, dict or structure file) gives its composition,
    so one structure column can feed both a crystal and a composition input."""
    from pymatgen.core import Composition, Element, Structure

    if isinstance(raw, Composition):
        comp = raw
    elif isinstance(raw, (Structure, dict)) or isinstance(raw, str) and Path(raw.strip()).suffix.lower() in \
            STRUCTURE_SUFFIXES:
        comp = read_structure(raw, "composition").composition  # bounded as the crystal input bounds it
    elif isinstance(raw, str):
        if not raw.strip():
            raise InputError("composition", "empty formula")
        if len(raw) > MAX_FORMULA_CHARS:
            raise InputError("composition", f"formula of {len(raw):,} characters is over the limit of "
                                            f"{MAX_FORMULA_CHARS:,}")
        try:
            comp = Composition(raw.strip())
        except Exception as err:  # pymatgen raises ValueError, KeyError or its own errors for bad formulas
            raise InputError("composition", f"cannot parse formula {raw!r}: {' '.join(str(err).split())}") from None
    else:
        raise InputError("composition", f"expected a formula string, got {type(raw).__name__}")
    unknown = [getattr(s, "symbol", str(s)) for s in comp if not isinstance(s, Element) or s.Z > MAX_Z]
    if unknown:
        raise InputError("composition", f"unknown element {unknown[0]!r} in formula {str(raw)!r}")
    if comp.num_atoms <= 0:
        raise InputError("composition", f"formula {str(raw)!r} has no atoms")
    if not math.isfinite(comp.num_atoms):  # pymatgen reads "H1e400" as infinitely many atoms
        raise InputError("composition", f"formula {str(raw)!r} has an amount beyond floating point")
    return comp


@register_encoder("composition")
class CompositionEncoder(nn.Module):
    out_dim: int  # the width of its tokens (the Encoder contract)

    def __init__(self, *, dim: PositiveInt = 128, layers: PositiveInt = 2, heads: PositiveInt = 4, dropout: Fraction = 0.0,
                 chgnet_elements: str | None = None, magpie: bool = False, oxidation: bool = False):
        super().__init__()
        self.out_dim, self.oxidation = dim, oxidation
        table = element_table(magpie)
        if chgnet_elements:  # the CHGNet version; rebuilt from the wheel at load, so not saved with the weights
            table = np.hstack([table, chgnet_element_table(chgnet_elements)])
        self.register_buffer("properties", torch.from_numpy(table), persistent=False)
        self.element = nn.Embedding(MAX_Z + 1, dim)
        self.describe = nn.Linear(self.properties.shape[1], dim)
        self.amount = nn.Sequential(nn.Linear(2, dim), nn.GELU(), nn.Linear(dim, dim))
        self.charge = nn.Linear(2, dim) if oxidation else None
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True)
        self.mix = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def featurize(self, raw) -> CompositionFeatures:
        comp = parse_composition(raw).fractional_composition
        items = sorted((el.Z, amount) for el, amount in comp.items())
        z, fraction = np.array([z for z, _ in items]), np.array([a for _, a in items], np.float32)
        oxidation = charge_balance(z, fraction) if self.oxidation else np.zeros((len(z), 0), np.float32)
        return CompositionFeatures(z, fraction, oxidation)

    @staticmethod
    def collate(items: list[CompositionFeatures | None]) -> dict:
        present = [(i, c) for i, c in enumerate(items) if c is not None]
        return {
            "z": concat([c.z for _, c in present], np.int64),
            "fraction": concat([c.fraction for _, c in present], np.float32),
            "oxidation": concat([c.oxidation for _, c in present], np.float32, width=2),  # unused when off
            **token_index([i for i, _ in present], [len(c.z) for _, c in present], len(items)),
        }

    def forward(self, batch: dict) -> Tokens:
        z, frac = batch["z"], batch["fraction"].unsqueeze(-1)
        amount = self.amount(torch.cat([frac, torch.log(frac.clamp(min=1e-6))], -1))
        h = self.element(z) + self.describe(self.properties[z]) + amount
        if self.charge is not None:
            h = h + self.charge(batch["oxidation"])
        tokens = pad_tokens(h, batch["row"], batch["pos"], batch["size"])
        # Rows without a composition have no token: give attention one dummy key so it stays finite.
        first = torch.arange(tokens.mask.shape[1], device=z.device) == 0
        keep = tokens.mask | (~tokens.mask.any(1, keepdim=True) & first)
        x = self.mix(tokens.x, src_key_padding_mask=~keep)
        return Tokens(x * tokens.mask.unsqueeze(-1), tokens.mask)
