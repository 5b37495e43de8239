"""Crystals: a pymatgen Structure (from CIF, POSCAR, a pymatgen JSON dict or an object) -> atom tokens.

``crystal-cgcnn`` is a from-scratch crystal graph convolution (Xie & Grossman 2018) in plain torch over a
periodic neighbour graph; ``crystal-chgnet`` transfers the pretrained CHGNet's atom features, frozen or fine-tuned.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from encoders.base import (Fraction, InputError, PositiveFloat, PositiveInt, Tokens, ZooError, concat, input_file,
                           pad_tokens, register_encoder, token_index)

STRUCTURE_SUFFIXES = {".cif": "cif", ".vasp": "poscar", ".poscar": "poscar", ".json": "json"}
# Bounds on one structure, so a bad cell is a per-row error and never a stalled or out-of-memory job: the
# text (or file) is bounded before parsing, and so are the sites it makes (a CIF's symmetry operations can
# expand 18 KB into 100,000 sites, which pymatgen takes minutes to build). A cell thinner than MIN_WIDTH or
# denser than MIN_VOLUME_PER_SITE (both far past any real solid) would put millions of periodic images within
# the cutoff.
MAX_SITES = 2000
MAX_TEXT_BYTES = 1 << 20   # a CIF of ~25,000 sites, parsed in a few seconds
MIN_WIDTH = 0.5            # Å between opposite faces of the cell
MIN_VOLUME_PER_SITE = 1.0  # Å^3
# The grid (fractional) on which symmetry images are counted before a CIF is expanded: pymatgen's own merge
# tolerance, so two images counted as one are ones it merges too (a pair split by a grid line counts twice:
# the count errs high, never low). No space group has more than 192 operations (Fm-3m), a magnetic one twice
# that; a CIF listing more is refused before they are parsed.
IMAGE_TOLERANCE = 1e-4
MAX_SYMMETRY_OPERATIONS = 384


def read_structure(raw, modality: str = "crystal"):
    """-> pymatgen Structure of at most MAX_SITES sites, from a Structure, a ``Structure.as_dict()`` dict (or its
    JSON text), a CIF or POSCAR file path, or CIF / POSCAR text. The sites are counted before pymatgen builds
    them (a dict's sites, a POSCAR's atom counts, a CIF's atom sites under its symmetry operations). Errors name
    ``modality``: the composition encoder reads structures through here too."""
    from pymatgen.core import Structure

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # CIF readers warn about every rounding they do
            structure = _read(raw, Structure)
    except InputError as err:
        raise InputError(modality, err.why) from None
    except KeyError as err:
        raise InputError(modality, f"cannot read structure: missing key {err}") from None
    except Exception as err:  # pymatgen's parsers raise many exception types for malformed files
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(modality, f"cannot read structure: {why}") from None
    if len(structure) > MAX_SITES:
        raise InputError(modality, f"{len(structure):,} sites is over the limit of {MAX_SITES:,}")
    return structure


def parse_structure(raw, ordered: bool = True):
    """-> pymatgen Structure (``read_structure``) with a sane geometry; ``ordered`` refuses partial occupancies
    (for backbones that need one species per site)."""
    structure = read_structure(raw)
    if len(structure) == 0:
        raise InputError("crystal", "structure has no sites")
    _check_geometry(structure)
    if ordered and not structure.is_ordered:
        site = next(i for i, s in enumerate(structure) if not s.is_ordered)
        raise InputError("crystal", f"disordered structure (partial occupancy on site {site}: "
                                    f"{structure[site].species}); this encoder needs one species per site")
    return structure


def _check_geometry(structure) -> None:
    lattice = structure.lattice
    if not (np.isfinite(lattice.matrix).all() and np.isfinite(structure.frac_coords).all()):
        raise InputError("crystal", "the lattice or the coordinates hold NaN or inf")
    if not abs(lattice.volume) / len(structure) >= MIN_VOLUME_PER_SITE:  # a flat cell included (volume 0)
        raise InputError("crystal", f"{abs(lattice.volume) / len(structure):.3g} Å^3 per site is denser than any "
                                    f"real crystal (at least {MIN_VOLUME_PER_SITE} Å^3)")
    width = min(lattice.d_hkl(plane) for plane in ((1, 0, 0), (0, 1, 0), (0, 0, 1)))
    if width < MIN_WIDTH:
        raise InputError("crystal", f"the cell is {width:.3g} Å thin, under the {MIN_WIDTH} Å any real crystal has")


def _looks_like_path(text: str) -> bool:
    path = Path(text)
    return path.suffix.lower() in STRUCTURE_SUFFIXES or path.name.upper().startswith(("POSCAR", "CONTCAR"))


def _read(raw, Structure):
    from monty.io import zopen
    from pymatgen.io.cif import CifParser

    if isinstance(raw, Structure):
        return raw
    if isinstance(raw, dict):
        return _from_dict(raw, Structure)
    if not isinstance(raw, (str, Path)):
        raise InputError("crystal", f"expected a structure, a dict or a file path, got {type(raw).__name__}")
    text = str(raw).strip()
    if not text:
        raise InputError("crystal", "empty structure")
    if "\n" not in text and not text.startswith("{"):
        if not _looks_like_path(text):
            raise InputError("crystal", f"{text[:60]!r} is neither a structure file (.cif, .vasp, .json, POSCAR) "
                                        "nor CIF / POSCAR text")
        path = input_file(text, "crystal", MAX_TEXT_BYTES)
        fmt = STRUCTURE_SUFFIXES.get(path.suffix.lower(), "poscar")
        with zopen(path, mode="rt", encoding="utf-8", errors="replace") as f:  # a POSCAR.gz too
            text = f.read(MAX_TEXT_BYTES + 1)
    else:
        fmt = "json" if text.startswith("{") else "cif" if "_cell_length_a" in text else "poscar"
    if len(text) > MAX_TEXT_BYTES:
        raise InputError("crystal", f"structure text of {len(text):,} characters is over the limit of "
                                    f"{MAX_TEXT_BYTES:,}")
    if fmt == "json":
        return _from_dict(json.loads(text), Structure)
    if fmt == "cif":
        parser = CifParser.from_str(text)
        if _cif_sites(parser) > MAX_SITES:
            raise InputError("crystal", f"its symmetry operations expand the CIF to over {MAX_SITES:,} sites, "
                                        "the limit")
        return parser.parse_structures(primitive=False)[0]
    declared = _poscar_sites(text)
    if declared > MAX_SITES:
        raise InputError("crystal", f"the POSCAR declares {declared:,} atoms, over the limit of {MAX_SITES:,}")
    return Structure.from_str(text, fmt="poscar")


def _from_dict(d, Structure):
    sites = d.get("sites") if isinstance(d, dict) else None
    if isinstance(sites, list) and len(sites) > MAX_SITES:
        raise InputError("crystal", f"{len(sites):,} sites is over the limit of {MAX_SITES:,}")
    return Structure.from_dict(d)


def _poscar_sites(text: str) -> int:
    """The atoms a POSCAR declares: the counts on its sixth line, or its seventh after element names (0 if none)."""
    for line in text.splitlines()[5:7]:
        if re.fullmatch(r"\s*\d+(\s+\d+)*\s*", line):
            return sum(map(int, line.split()))
    return 0


def _listed_operations(block) -> int:
    """The symmetry operations a CIF block lists (a magnetic one's operations times its centrings), read from
    its loops before pymatgen parses them."""
    def longest(pattern: str) -> int:
        return max((len(v) if isinstance(v, list) else 1 for k, v in block.data.items() if re.search(pattern, k)),
                   default=1)

    return longest(r"symop(?!.*centering)|equiv_pos") * longest(r"centering")


def _cif_sites(parser) -> int:
    """The sites a CIF's blocks expand to under their symmetry operations, counted without building them and
    stopping past MAX_SITES: every atom-site row's images, wrapped into the cell, with coincident images (a
    special position's) counted once, as pymatgen merges them."""
    from pymatgen.io.cif import str2float

    total = 0
    for block in parser._cif.data.values():  # the parsed blocks (pymatgen has no public accessor)
        columns = [block.data.get(f"_atom_site_fract_{axis}") for axis in "xyz"]
        try:
            xyz = np.array([[str2float(v) for v in ([c] if isinstance(c, str) else c)] for c in columns],
                           dtype=np.float64).T
        except (TypeError, ValueError):
            continue  # no or unreadable coordinates: pymatgen refuses the block before expanding it
        listed = _listed_operations(block)
        if listed > MAX_SYMMETRY_OPERATIONS:
            raise InputError("crystal", f"the CIF lists {listed:,} symmetry operations; no space group has over "
                                        f"{MAX_SYMMETRY_OPERATIONS}")
        ops = parser.get_magsymops(block) if parser.feature_flags["magcif"] else parser.get_symops(block)
        affine = np.array([op.affine_matrix[:3] for op in ops])  # [ops, 3, 4]
        finite = np.isfinite(xyz).all(1)
        total += len(ops) * int((~finite).sum())  # NaN images never match, so pymatgen keeps every one
        seen: set[int] = set()
        bins = round(1 / IMAGE_TOLERANCE)
        for chunk in np.array_split(xyz[finite], max(1, len(xyz) * len(ops) // 65536)):
            images = np.einsum("kij,rj->rki", affine[:, :, :3], chunk) + affine[:, :, 3]
            cell = np.round(images % 1.0 * bins).astype(np.int64) % bins  # wrapped: 0.9999 and 0 are one
            seen.update((cell @ np.array([bins * bins, bins, 1])).ravel().tolist())
            if total + len(seen) > MAX_SITES:
                break
        total += len(seen)
        if total > MAX_SITES:
            break
    return total


@dataclass
class CrystalGraph:
    z: np.ndarray         # [n_atoms] atomic numbers
    center: np.ndarray    # [n_edges] receiving atom
    neighbor: np.ndarray  # [n_edges] sending atom (a periodic image of it)
    distance: np.ndarray  # [n_edges] Å

    @property
    def size(self) -> int:  # one token per atom
        return len(self.z)

    def elements(self) -> np.ndarray:
        return self.z


def neighbor_graph(structure, cutoff: float, max_neighbors: int) -> CrystalGraph:
    """Each atom's ``max_neighbors`` nearest neighbours within ``cutoff`` Å, periodic images included."""
    center, neighbor, _, distance = structure.get_neighbor_list(r=cutoff)
    order = np.lexsort((distance, center))
    center, neighbor, distance = center[order], neighbor[order], distance[order]
    rank = np.arange(len(center)) - np.searchsorted(center, center)  # position within each atom's list
    keep = rank < max_neighbors
    z = np.array([site.specie.Z for site in structure], dtype=np.int64)
    return CrystalGraph(z, center[keep].astype(np.int64), neighbor[keep].astype(np.int64),
                        distance[keep].astype(np.float32))


def collate_graphs(graphs: list[CrystalGraph | None]) -> dict:
    present = [(i, g) for i, g in enumerate(graphs) if g is not None]
    sizes = np.array([len(g.z) for _, g in present], dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    return {
        "z": concat([g.z for _, g in present], np.int64),
        "center": concat([g.center + s for (_, g), s in zip(present, starts)], np.int64),
        "neighbor": concat([g.neighbor + s for (_, g), s in zip(present, starts)], np.int64),
        "distance": concat([g.distance for _, g in present], np.float32),
        **token_index([i for i, _ in present], sizes, len(graphs)),
    }


class GaussianDistance(nn.Module):
    def __init__(self, cutoff: float, n: int):
        super().__init__()
        self.register_buffer("centers", torch.linspace(0, cutoff, n), persistent=False)
        self.gamma = (n / cutoff) ** 2

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.gamma * (d.unsqueeze(-1) - self.centers) ** 2)


class CGConv(nn.Module):
    """v_i <- softplus(v_i + BN(sum_j sigmoid(W_f z_ij) * softplus(W_s z_ij))), z_ij = [v_i, v_j, e_ij]."""

    def __init__(self, dim: int, edge_dim: int):
        super().__init__()
        self.lin = nn.Linear(2 * dim + edge_dim, 2 * dim)
        self.norm_edge, self.norm_out = nn.BatchNorm1d(2 * dim), nn.BatchNorm1d(dim)

    def forward(self, v, center, neighbor, e):
        gate, core = self.norm_edge(self.lin(torch.cat([v[center], v[neighbor], e], -1))).chunk(2, -1)
        messages = torch.sigmoid(gate) * F.softplus(core)
        summed = torch.zeros_like(v).index_add_(0, center, messages)
        return F.softplus(v + self.norm_out(summed))


@register_encoder("crystal-cgcnn")
class CrystalCGCNN(nn.Module):
    out_dim: int  # the width of its tokens (the Encoder contract)

    def __init__(self, *, dim: PositiveInt = 128, layers: PositiveInt = 3, cutoff: PositiveFloat = 8.0,
                 max_neighbors: PositiveInt = 12, gaussians: PositiveInt = 40):
        super().__init__()
        self.out_dim, self.cutoff, self.max_neighbors = dim, cutoff, max_neighbors
        self.embed = nn.Embedding(119, dim)
        self.expand = GaussianDistance(cutoff, gaussians)
        self.convs = nn.ModuleList(CGConv(dim, gaussians) for _ in range(layers))

    def featurize(self, raw) -> CrystalGraph:
        return neighbor_graph(parse_structure(raw), self.cutoff, self.max_neighbors)

    @staticmethod
    def collate(graphs: list[CrystalGraph | None]) -> dict:
        return collate_graphs(graphs)

    def forward(self, batch: dict) -> Tokens:
        v, e = self.embed(batch["z"]), self.expand(batch["distance"])
        for conv in self.convs:
            v = conv(v, batch["center"], batch["neighbor"], e)
        return pad_tokens(v, batch["row"], batch["pos"], batch["size"])


CHGNET_FEATURES = 129  # two layers of 64 atom features, and the atom's site energy
# What ``top-k`` counts from the top: CHGNet's embeddings (atoms, bond and angle bases), then its four
# interaction blocks. ``top_k: 5`` trains all of it.
CHGNET_STAGES = 5
# CHGNet's graphs per forward. On 200 perovskites (2 cores, lightly shared) batches of 16-32 ran at 95-97
# cells/s on one thread and 123-149 on two, against 76 one graph at a time: a batch runs on the caller's torch
# threads, as CHGNet's own predict_structure does; a lone graph keeps one (a second one only spins on its small
# matrices, and under a loaded machine both collapse to a few cells/s).
CHGNET_BATCH = 32


@dataclass
class AtomFeatures:
    """A frozen CHGNet's features (``features``), or, when CHGNet trains, the geometry its forward starts from
    (the rest); the fields of the other kind are empty."""

    z: np.ndarray           # [n_atoms] atomic numbers
    features: np.ndarray    # [n_atoms, CHGNET_FEATURES] CHGNet atom features and site energy (eV), float32
    lengths: np.ndarray     # [n_bonds] float32 Å, each undirected bond within CHGNet's 6 Å
    angles: np.ndarray      # [n_angles] float32 radians between two bonds within 3 Å that meet at an atom
    atom_graph: np.ndarray  # [n_directed, 2] centre and neighbour atom of each directed bond
    bond_of: np.ndarray     # [n_directed] the undirected bond of each directed one
    bond_graph: np.ndarray  # [n_angles, 3] the centre atom and the two undirected bonds of each angle

    @property
    def size(self) -> int:  # one token per atom
        return len(self.z)

    def elements(self) -> np.ndarray:
        return self.z


def _no_geometry() -> list[np.ndarray]:
    return [np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros((0, 2), np.int32), np.zeros(0, np.int32),
            np.zeros((0, 3), np.int32)]


def _chgnet_geometry(graph) -> list[np.ndarray]:
    """A CHGNet graph's bond lengths and angles, computed with the same float32 operations as CHGNet's own
    ``BatchedGraph.from_graphs``, and its index arrays: what CHGNet's forward starts from."""
    with torch.inference_mode():
        cart = graph.atom_frac_coord @ graph.lattice
        atom_graph = graph.atom_graph.reshape(-1, 2)
        vectors = cart[atom_graph[:, 0]] - (cart[atom_graph[:, 1]] + graph.neighbor_image @ graph.lattice)
        lengths = torch.norm(vectors, dim=1)
        units = vectors / lengths[:, None]
        bond_graph = graph.bond_graph.reshape(-1, 5)  # centre atom, then (undirected, directed) of each bond
        cosine = torch.sum(units[bond_graph[:, 2]] * units[bond_graph[:, 4]], dim=1) * (1 - 1e-6)
        return [lengths[graph.undirected2directed].numpy(), torch.acos(cosine).numpy(), atom_graph.numpy(),
                graph.directed2undirected.numpy(), bond_graph[:, [0, 1, 3]].numpy()]


@functools.cache
def chgnet_backbone(version: str):
    """The pretrained CHGNet that ships inside the chgnet wheel, loaded once per process, on the CPU (whatever
    the caller's default device: a model built on the meta device must not leave a weightless one cached)."""
    with contextlib.redirect_stdout(io.StringIO()), torch.device("cpu"):  # CHGNet prints its parameter count
        from chgnet.model import CHGNet

        model = CHGNet.load(model_name=version, use_device="cpu", verbose=False)
    return model.eval().requires_grad_(False)


@contextlib.contextmanager
def _torch_threads(n: int):
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _chgnet_call(fn, *args):
    try:
        return fn(*args)
    except Exception as err:  # CHGNet raises ValueError, RuntimeError or AttributeError for what it can't take
        raise InputError("crystal", f"CHGNet cannot take this structure: {str(err).splitlines()[0]}") from None


def _chgnet_features(model, graphs: list) -> list[np.ndarray | InputError]:
    """Each graph's [n_atoms, CHGNET_FEATURES] features from one CHGNet forward over them all; when the batch
    fails, the graphs run one at a time, so only the one CHGNet cannot take is an InputError."""
    last = []
    hook = model.readout_norm.register_forward_hook(lambda module, args, out: last.append(out))
    try:
        with torch.inference_mode(), _torch_threads(1) if len(graphs) == 1 else contextlib.nullcontext():
            out = _chgnet_call(lambda: model(graphs, task="e", return_atom_feas=True, return_site_energies=True))
    except InputError as err:
        out = err
    finally:
        hook.remove()
    if isinstance(out, InputError):
        return [out] if len(graphs) == 1 else [_chgnet_features(model, [g])[0] for g in graphs]
    # The features after CHGNet's third interaction block (its magnetic-moment input) and after the last
    # one (its energy input), and the site energy CHGNet predicts from them: a formation energy is a total
    # energy less elemental references (on 3,000 perovskites a linear fit on element counts and CHGNet's
    # energy has MAE 0.14 eV, counts alone 0.43). The trained adapter barely gains from it: perovskite
    # fold 0 at 30 epochs scored 0.0433 with it and 0.0430 without.
    site_energy = torch.cat(out["site_energies"]).unsqueeze(-1)
    features = torch.cat([torch.cat(out["atom_fea"]), last[0], site_energy], -1).numpy().astype(np.float32)
    return np.split(features, np.cumsum([len(a) for a in out["atom_fea"]])[:-1])


@register_encoder("crystal-chgnet")
class CrystalCHGNet(nn.Module):
    """Transfer from CHGNet 0.3.0 (Deng et al. 2023, trained on the Materials Project trajectories).

    Under ``train`` (the default: the bundled materials-property model was trained so) and ``frozen`` the backbone
    is frozen: its per-atom features are computed at featurization (and so cached with the data set), and only
    the adapter below is trained and saved. Under ``top-k`` the last k of CHGNet's ``CHGNET_STAGES`` stages and
    its readout train with the adapter: featurization keeps CHGNet's graph (bond lengths, angles, indices) and
    the forward runs CHGNet on it, its frozen stages building no autograd graph. The trained stages are saved
    with the model; the artifact records the backbone's package and version, and loading rebuilds the rest
    from the installed wheel.
    """

    out_dim: int  # the width of its tokens (the Encoder contract)

    def __init__(self, *, version: str = "0.3.0", dim: PositiveInt = 128, layers: PositiveInt = 2,
                 dropout: Fraction = 0.0):
        super().__init__()
        from importlib.metadata import version as package_version

        self.version, self.out_dim = version, dim
        self.chgnet: nn.Module | None = None  # CHGNet's own copy, once some of it trains (``set_transfer``)
        self.package = f"chgnet=={package_version('chgnet')} CHGNet {version}"
        self.backbone = f"{self.package} (frozen, not in the weights)"
        self.embed = nn.Embedding(119, dim)
        self.adapter = nn.Sequential(nn.Linear(CHGNET_FEATURES, dim), *[
            m for _ in range(layers - 1) for m in (nn.SiLU(), nn.Dropout(dropout), nn.Linear(dim, dim))])

    def set_transfer(self, strategy: str, *, top_k: int = 2, **_) -> None:
        """``frozen``: CHGNet trains nothing, as under ``train``; ``top-k``: its last k stages (``top_k: 1``, the
        last interaction block; 5, all of it) and its readout train."""
        if strategy == "frozen":
            return
        if strategy != "top-k":
            raise ZooError(f"crystal-chgnet has no transfer strategy {strategy!r} (it has train and frozen, which "
                           f"keep CHGNet frozen, and top-k, which fine-tunes its last top_k of {CHGNET_STAGES} stages)")
        if not 0 < top_k <= CHGNET_STAGES:
            raise ZooError(f"crystal-chgnet: top_k {top_k} is not 1 to {CHGNET_STAGES}, the stages of CHGNet "
                           "(its embeddings, then four interaction blocks)")
        self.chgnet = copy.deepcopy(chgnet_backbone(self.version))  # the shared one stays as featurization needs it
        trained = [m for stage in self._stages()[-top_k:] for m in stage] + [self.chgnet.readout_norm, self.chgnet.mlp]
        for module in trained:
            module.requires_grad_(True)
        self.backbone = f"{self.package} (its last {top_k} of {CHGNET_STAGES} stages and readout in the weights)"

    def _stages(self) -> list[list[nn.Module]]:
        """CHGNet's modules by stage, in the order its forward runs them."""
        c = self.chgnet
        embeddings = [c.atom_embedding, c.bond_basis_expansion, c.bond_embedding, c.bond_weights_ag, c.bond_weights_bg,
                      c.angle_basis_expansion, c.angle_embedding]
        # Block i updates atoms, then bonds, then angles, and the last block atoms alone: nothing reads the angles
        # of the block before it (CHGNet computes and drops them), so that update is neither run nor trained here.
        return [embeddings] + [[c.atom_conv_layers[i], *c.bond_conv_layers[i : i + 1],
                                *c.angle_layers[i : min(i + 1, c.n_conv - 2)]] for i in range(c.n_conv)]

    def featurize(self, raw) -> AtomFeatures:
        features = self.featurize_many([raw])[0]
        if isinstance(features, InputError):
            raise features
        return features

    def featurize_many(self, raws: list) -> list[AtomFeatures | InputError]:
        """``featurize`` over many cells, a frozen CHGNet running CHGNET_BATCH graphs at a time (a batch amortizes
        its per-call overhead); a cell CHGNet cannot take is that cell's InputError and the others are kept."""
        model = chgnet_backbone(self.version)
        results: list[AtomFeatures | InputError] = []
        graphs = []  # (position in raws, atomic numbers, CHGNet graph)
        for raw in raws:
            try:
                structure = parse_structure(raw)
                beyond = [site.specie for site in structure if site.specie.Z > 94]
                if beyond:
                    raise InputError("crystal", f"element {beyond[0]} is beyond the 94 elements CHGNet was trained on")
                graph = _chgnet_call(model.graph_converter, structure)
            except InputError as err:
                results.append(err)
                continue
            graphs.append((len(results), np.array([site.specie.Z for site in structure], dtype=np.int64), graph))
            results.append(None)
        if self.chgnet is not None:  # CHGNet trains: it runs in the forward, from its graph's geometry
            for i, z, graph in graphs:
                results[i] = AtomFeatures(z, np.zeros(0, np.float32), *_chgnet_geometry(graph))
            return results
        for start in range(0, len(graphs), CHGNET_BATCH):
            batch = graphs[start : start + CHGNET_BATCH]
            for (i, z, _), features in zip(batch, _chgnet_features(model, [g for _, _, g in batch])):
                ok = not isinstance(features, InputError)
                results[i] = AtomFeatures(z, features, *_no_geometry()) if ok else features
        return results

    def collate(self, items: list[AtomFeatures | None]) -> dict:
        present = [a for a in items if a is not None]
        batch = {
            "z": concat([a.z for a in present], np.int64),
            **token_index([i for i, a in enumerate(items) if a is not None], [len(a.z) for a in present], len(items)),
        }
        if self.chgnet is None:
            return batch | {"features": concat([a.features for a in present], np.float32, CHGNET_FEATURES)}
        atoms = np.cumsum([0] + [len(a.z) for a in present])  # each row's first atom and bond in the batch
        bonds = np.cumsum([0] + [len(a.lengths) for a in present])
        return batch | {
            "lengths": concat([a.lengths for a in present], np.float32),
            "angles": concat([a.angles for a in present], np.float32),
            "atom_graph": concat([a.atom_graph + s for a, s in zip(present, atoms)], np.int64, 2),
            "bond_of": concat([a.bond_of + b for a, b in zip(present, bonds)], np.int64),
            "bond_graph": concat([a.bond_graph + [s, b, b] for a, s, b in zip(present, atoms, bonds)], np.int64, 3),
        }

    def _run_chgnet(self, batch: dict) -> torch.Tensor:
        """[n_atoms, CHGNET_FEATURES], the features ``_chgnet_features`` reads off CHGNet's forward, with gradients
        through its trained stages: CHGNet's ``_compute`` restricted to what the features need."""
        c, graph = self.chgnet, {"atom_graph": batch["atom_graph"], "directed2undirected": batch["bond_of"]}
        bases_ag = c.bond_basis_expansion.rbf_expansion_ag(batch["lengths"])
        weights_bg = c.bond_weights_bg(c.bond_basis_expansion.rbf_expansion_bg(batch["lengths"]))
        atoms, bonds = c.atom_embedding(batch["z"] - 1), c.bond_embedding(bases_ag)
        weights_ag = c.bond_weights_ag(bases_ag)
        angles = c.angle_embedding(c.angle_basis_expansion.fourier_expansion(batch["angles"]))
        for i, (atom_conv, *updates) in enumerate(self._stages()[1:]):
            atoms = atom_conv(atom_feas=atoms, bond_feas=bonds, bond_weights=weights_ag, **graph)
            if i == c.n_conv - 2:
                third = atoms  # after the block before the last: CHGNet's magnetic-moment input
            if updates and len(batch["angles"]):  # as in CHGNet, a batch without angles updates no bond
                bonds = updates[0](atom_feas=atoms, bond_feas=bonds, bond_weights=weights_bg, angle_feas=angles,
                                   bond_graph=batch["bond_graph"])
                if len(updates) == 2:
                    angles = updates[1](atom_feas=atoms, bond_feas=bonds, angle_feas=angles,
                                        bond_graph=batch["bond_graph"])
        atoms = c.readout_norm(atoms)
        site_energy = c.mlp(atoms) + c.composition_model.fc.weight[0, batch["z"] - 1].unsqueeze(-1)
        return torch.cat([third, atoms, site_energy], -1)

    def forward(self, batch: dict) -> Tokens:
        features = batch["features"] if self.chgnet is None else self._run_chgnet(batch)
        h = self.adapter(features) + self.embed(batch["z"])
        return pad_tokens(h, batch["row"], batch["pos"], batch["size"])
