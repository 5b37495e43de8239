import numpy as np
import pytest
import torch

from encoders import InputError
from encoders.base import pad_tokens
from encoders.molecule import MoleculeDMPNN


def test_featurize_ethanol_has_three_atoms_two_bonds():
    g = MoleculeDMPNN.featurize("CCO")
    assert g.atoms.shape[0] == 3 and g.mass.shape == (3,)
    assert g.bonds.shape[0] == 2
    assert sorted(map(tuple, g.pairs.tolist())) == [(0, 1), (1, 2)]


def test_featurize_strips_whitespace_like_esol_files():
    assert MoleculeDMPNN.featurize(" CCO ").atoms.shape[0] == 3


@pytest.mark.parametrize("raw, why", [
    ("xyz", "cannot parse"),
    ("C1CC", "cannot parse"),
    ("CC(C)(C)(C)C", "valence"),
    ("c1ccc1n", "aromatic"),
    ("", "empty"),
    (None, "got NoneType"),
    (3.5, "got float"),
])
def test_bad_smiles_raise_input_error_naming_the_modality(raw, why):
    with pytest.raises(InputError) as err:
        MoleculeDMPNN.featurize(raw)
    assert err.value.modality == "molecule"
    assert why in str(err.value)


def test_collate_and_forward_give_padded_tokens_with_masks():
    encoder = MoleculeDMPNN(hidden=16, depth=3)
    smiles = ["CCO", None, "c1ccccc1", "C"]
    batch = encoder.collate([None if s is None else encoder.featurize(s) for s in smiles])
    tokens = encoder(batch)
    assert tokens.x.shape == (4, 6, 16)
    assert tokens.mask.sum(1).tolist() == [3, 0, 6, 1]   # the missing row has no token at all
    assert torch.all(tokens.x[~tokens.mask] == 0)


def test_atom_tokens_do_not_depend_on_smiles_atom_order():
    encoder = MoleculeDMPNN(hidden=16).eval()
    a, b = (encoder(encoder.collate([encoder.featurize(s)])) for s in ("OCC(=O)N", "NC(=O)CO"))
    sort = lambda t: np.sort(t.x[t.mask].detach().numpy(), axis=0)
    np.testing.assert_allclose(sort(a), sort(b), atol=1e-5)


def test_messages_depend_on_bonds_not_only_atoms():
    # Same atoms, different connectivity: butane and isobutane must not get identical tokens.
    encoder = MoleculeDMPNN(hidden=16).eval()
    a, b = (encoder(encoder.collate([encoder.featurize(s)])).x[0].sum(0) for s in ("CCCC", "CC(C)C"))
    assert not torch.allclose(a, b)


# --- The featurizer against a frozen copy of its first implementation (one RDKit getter per atom and property,
# through RDKit's atom and bond sequences): every array must come out equal, dtype included. -------------------

import csv
from types import SimpleNamespace

from rdkit import Chem

from encoders.molecule import ATOM_FEATURES, BOND_FEATURES, MAX_ATOMS, MAX_SMILES_CHARS, featurize_mol
from tests.conftest import SHARED_DATA

_REF_BOND_TYPE = {1.0: 0, 2.0: 1, 3.0: 2, 1.5: 3}
_REF_ATOM_OFFSETS = np.cumsum([0] + [n for _, n in ATOM_FEATURES][:-1])
_REF_BOND_OFFSETS = np.cumsum([0] + [n for _, n in BOND_FEATURES][:-1])
_REF_ATOM_MAX = np.array([n - 1 for _, n in ATOM_FEATURES])
_REF_BOND_MAX = np.array([n - 1 for _, n in BOND_FEATURES])


def reference_parse(smiles) -> Chem.Mol:
    if isinstance(smiles, Chem.Mol):
        return smiles
    if not isinstance(smiles, str):
        raise InputError("molecule", f"expected a SMILES string, got {type(smiles).__name__}")
    text = smiles.strip()
    shown = repr(text) if len(text) <= 80 else f"{text[:60]!r}... ({len(text):,} characters)"
    if not text:
        raise InputError("molecule", "empty SMILES")
    if not text.isascii():
        raise InputError("molecule", f"SMILES {shown} holds non-ASCII characters")
    if len(text) > MAX_SMILES_CHARS:
        raise InputError("molecule", f"SMILES of {len(text):,} characters is over the limit of {MAX_SMILES_CHARS:,}")
    mol = Chem.MolFromSmiles(text, sanitize=False)
    if mol is None:
        raise InputError("molecule", f"cannot parse SMILES {shown}")
    try:
        Chem.SanitizeMol(mol)
    except Exception as err:
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError("molecule", f"invalid SMILES {shown}: {why}") from None
    if mol.GetNumAtoms() == 0:
        raise InputError("molecule", f"SMILES {shown} has no atoms")
    if mol.GetNumAtoms() > MAX_ATOMS:
        raise InputError("molecule", f"{mol.GetNumAtoms():,} atoms is over the limit of {MAX_ATOMS:,}")
    return mol


def reference_featurize(mol: Chem.Mol) -> SimpleNamespace:
    atom_rows = np.array(
        [(a.GetAtomicNum(), a.GetDegree(), a.GetFormalCharge() + 3, int(a.GetChiralTag()), a.GetTotalNumHs(),
          int(a.GetHybridization()), a.GetIsAromatic(), a.IsInRing(), a.GetMass()) for a in mol.GetAtoms()],
        dtype=np.float64,
    )
    bond_rows = np.array(
        [(_REF_BOND_TYPE.get(b.GetBondTypeAsDouble(), 4), b.GetIsConjugated(), b.IsInRing(), int(b.GetStereo()),
          b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()],
        dtype=np.int64,
    ).reshape(-1, len(BOND_FEATURES) + 2)
    atoms = np.clip(atom_rows[:, :-1].astype(np.int64), 0, _REF_ATOM_MAX) + _REF_ATOM_OFFSETS
    bonds = np.clip(bond_rows[:, :-2], 0, _REF_BOND_MAX) + _REF_BOND_OFFSETS
    return SimpleNamespace(
        atoms=atoms.astype(np.int16),
        mass=(atom_rows[:, -1] / 100.0).astype(np.float32),
        bonds=bonds.astype(np.int16),
        pairs=bond_rows[:, -2:].astype(np.int32),
    )


EDGE_CASES = [
    "[H]C([H])([H])[H]", "[H][H]", "[2H]O[2H]", "[13CH4]", "[13C]1CCCCC1", "[235U]", "OC([2H])C",
    "[NH4+]", "[O-]C(=O)C", "CN(=O)=O", "[O-][Cl+3]([O-])([O-])[O-]", "[Fe+6]", "[C-4]", "[N-3]", "[Zn+2].[O-2]",
    "[CH3]", "C[CH2]", "[O]", "[CH]", "[C]",
    "C/C=C/C", r"C/C=C\C", "F[C@H](Cl)Br", "F[C@@H](Cl)Br", "C[C@H]1CC[C@@H](C)CC1", r"F/C=C/C=C/Cl",
    "C[C@@]12CC[C@H]3[C@@H](CC=C4C[C@@H](O)CC[C@]34C)[C@@H]1CC[C@@H]2O", "C=[C@]=CC",
    "F[Co@OH1](F)(F)(F)(F)F", "F[P@TB1](F)(F)(F)F", "Cl[Pt@SP1](Cl)([NH3])[NH3]",
    "c1ccncc1", "c1cc[nH]c1", "c1ccoc1", "c1ccsc1", "Cn1cnc2c1c(=O)n(C)c(=O)n2C", "c1ccc2[nH]ccc2c1",
    "C1=CC=CC=C1", "o1cccc1", "c1cn[nH]c1", "[nH]1cccc1", "c1ccc2ccccc2c1", "[se]1cccc1",
    "[Na+].[Cl-]", "[Li]C", "C[Mg]Br", "CC(=O)O[Na]", "[K+].[K+].[O-]S([O-])(=O)=O", "Cl[Sn](Cl)(Cl)Cl",
    "CCO.O", "C.C.C", "[He]", "[Og]", "[Lr]", "[No]", "*", "*C", "[*:1]CC", "[CH3:7]C", "C->[Fe]",
    "[Re]$[Re]", "FS(F)(F)(F)(F)F", "FI(F)(F)(F)(F)(F)F", "[SiH4]", "B(F)(F)F", "[BH4-]", "C#N", "C=C=C", "N#[N+][O-]",
    "C1CCCCCCCCCCCCCCCCC1", "C1CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC1",
    "O=C1N[C@@H](C)C(=O)N[C@H](C)C(=O)N[C@@H](C)C(=O)N[C@H](C)C(=O)N[C@@H](C)C(=O)N1",
    "C12C3C4C1C5C2C3C45", "C1CC2CCC1CC2", "C" * 200, "CC" * 100 + "O", "c1ccccc1" * 3,
    "CCO ethanol", "C/C=C/C |c:1|", "F[C@H](Cl)Br |&1:1|", "  CCO  ",
]


def dataset_smiles() -> list[str]:
    """The SMILES of the MoleculeNet sets under the shared data folder (ESOL, BBBP, Tox21, SIDER, ClinTox, BACE)."""
    files = [SHARED_DATA / "moleculenet_esol" / "delaney-processed.csv"] + [
        SHARED_DATA / f"moleculenet_{name}" / f"{name}_chemprop.csv" for name in ("bbbp", "tox21", "sider", "clintox", "bace")]
    if not all(f.is_file() for f in files):
        pytest.skip(f"MoleculeNet sets not all under {SHARED_DATA}")
    smiles = []
    for f in files:
        with open(f, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            column = header.index("smiles") if "smiles" in header else 0  # BACE calls it "mol"
            smiles += [row[column] for row in reader]
    return list(dict.fromkeys(smiles))


def assert_same_graph(got, want, smiles) -> None:
    for name in ("atoms", "mass", "bonds", "pairs"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), (smiles, name, a, b)


def reference_or_error(smiles):
    try:
        return reference_featurize(reference_parse(smiles))
    except InputError as err:
        return err


@pytest.mark.parametrize("smiles", EDGE_CASES)
def test_featurize_equals_the_reference_featurizer_on_edge_cases(smiles):
    want = reference_or_error(smiles)
    (many,) = MoleculeDMPNN.featurize_many([smiles])
    if isinstance(want, InputError):
        with pytest.raises(InputError) as err:
            MoleculeDMPNN.featurize(smiles)
        assert str(err.value) == str(many) == str(want)
        return
    assert_same_graph(MoleculeDMPNN.featurize(smiles), want, smiles)
    assert_same_graph(many, want, smiles)
    # A molecule given as a Mol, with nothing known of its text, goes through every getter.
    assert_same_graph(MoleculeDMPNN.featurize(reference_parse(smiles)), want, smiles)
    assert_same_graph(featurize_mol(reference_parse(smiles)), want, smiles)


def test_featurize_equals_the_reference_featurizer_on_moleculenet():
    smiles = dataset_smiles()
    assert len(smiles) > 10_000
    wants = [reference_or_error(s) for s in smiles]
    assert sum(isinstance(w, InputError) for w in wants) < 20  # a few MoleculeNet rows RDKit refuses
    for s, got, want in zip(smiles, MoleculeDMPNN.featurize_many(smiles), wants):
        if isinstance(want, InputError):
            assert str(got) == str(want)
        else:
            assert_same_graph(got, want, s)
    for s, want in list(zip(smiles, wants))[::20]:  # one cell at a time, and as a Mol
        if not isinstance(want, InputError):
            assert_same_graph(MoleculeDMPNN.featurize(s), want, s)
            assert_same_graph(featurize_mol(reference_parse(s)), want, s)


def test_atomic_masses_from_the_periodic_table_are_what_atoms_report():
    table = Chem.GetPeriodicTable()
    for z in range(1, 119):
        smiles = f"[{table.GetElementSymbol(z)}]"
        assert_same_graph(MoleculeDMPNN.featurize(smiles), reference_featurize(reference_parse(smiles)), smiles)


@pytest.mark.parametrize("raw", ["xyz", "C1CC", "CC(C)(C)(C)C", "c1ccc1n", "", "   ", "C" * (MAX_ATOMS + 1),
                                 "C" * (MAX_SMILES_CHARS + 1), "CCé", "[Xx]" + "C" * 100, None, 3.5, "c" * 90])
def test_parse_errors_are_the_reference_errors(raw):
    with pytest.raises(InputError) as want:
        reference_parse(raw)
    with pytest.raises(InputError) as got:
        MoleculeDMPNN.featurize(raw)
    assert str(got.value) == str(want.value)
    assert str(MoleculeDMPNN.featurize_many(["CCO", raw])[1]) == str(want.value)


def test_getters_that_cost_an_enum_each_run_only_where_the_smiles_can_set_them(monkeypatch):
    # Chiral tags and bond stereo come only from "@" and "/" or "\" in a SMILES (their getters return an enum,
    # ~1 us an atom), and atoms are read by index, not through RDKit's sequence wrappers (~1.5 us an atom).
    def refused(*args):
        raise AssertionError("read where it cannot be set")
    with monkeypatch.context() as patch:
        for cls, name in [(Chem.Atom, "GetChiralTag"), (Chem.Bond, "GetStereo"), (Chem.Atom, "GetIsotope"),
                          (Chem.Atom, "GetMass"), (Chem.Mol, "GetAtoms"), (Chem.Mol, "GetBonds")]:
            patch.setattr(cls, name, refused)
        for smiles in ["CC(=O)Oc1ccccc1C(=O)O", "CCO", "[NH4+]", "C=CC#N"]:
            MoleculeDMPNN.featurize(smiles)
    assert MoleculeDMPNN.featurize("F[C@H](Cl)Br").atoms[1, 3] - _REF_ATOM_OFFSETS[3] == 2  # CHI_TETRAHEDRAL_CCW


# --- The D-MPNN forward against its first formula (per-category embeddings stacked and summed, every bond
# embedded once per direction, each edge's reverse gathered by index): same tokens and same gradients. ----------

def reference_forward(encoder: MoleculeDMPNN, batch: dict) -> torch.Tensor:
    atoms, mass, src, dst = batch["atoms"], batch["mass"], batch["src"], batch["dst"]
    bonds = batch["bonds"].repeat_interleave(2, dim=0)  # collate once gave one row per directed edge
    h0 = encoder.atom_in(atoms).sum(1)[src] + encoder.mass_in(mass)[src] + encoder.bond_in(bonds).sum(1)
    h = torch.relu(h0)
    reverse = torch.arange(len(src), device=src.device) ^ 1
    for _ in range(encoder.depth - 1):
        incoming = torch.zeros(len(atoms), h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, dst, h)
        h = encoder.dropout(torch.relu(h0 + encoder.message(incoming[src] - h[reverse])))
    incoming = torch.zeros(len(atoms), h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, dst, h)
    out = torch.relu(encoder.atom_out(atoms).sum(1) + encoder.mass_out(mass) + encoder.update_out(incoming))
    return pad_tokens(encoder.dropout(out), batch["row"], batch["pos"], batch["size"]).x


FORWARD_BATCH = ["CCO", None, "c1ccccc1", "[Na+].[Cl-]", "[He]", "CC(=O)Oc1ccccc1C(=O)O", "F[C@H](Cl)Br",
                 "Cn1cnc2c1c(=O)n(C)c(=O)n2C", "C1CCCCCCCCCCCCCCCCC1", "C" * 60, None, "[2H]O[2H]", "N#[N+][O-]",
                 "C[C@@]12CC[C@H]3[C@@H](CC=C4C[C@@H](O)CC[C@]34C)[C@@H]1CC[C@@H]2O"]


@pytest.mark.parametrize("depth", [1, 3])
def test_forward_equals_the_reference_forward_with_the_same_gradients(depth):
    torch.manual_seed(depth)
    encoder = MoleculeDMPNN(hidden=64, depth=depth)
    for p in encoder.parameters():  # away from the default init, so that no term is near zero
        torch.nn.init.normal_(p, std=0.3)
    batch = encoder.collate([None if s is None else encoder.featurize(s) for s in FORWARD_BATCH])
    got, want = encoder(batch).x, reference_forward(encoder, batch)
    assert got.shape == want.shape and (got - want).abs().max() < 1e-5 * max(1.0, want.abs().max())
    weights = torch.randn_like(want)
    grads = [torch.autograd.grad((y * weights).sum(), list(encoder.parameters()), allow_unused=True)
             for y in (got, want)]
    for name, a, b in zip([n for n, _ in encoder.named_parameters()], *grads):
        if b is None:  # the message weights at depth 1
            assert a is None, name
        else:
            assert (a - b).abs().max() <= 1e-4 * max(1.0, b.abs().max()), name


def test_forward_of_molecules_without_bonds_and_of_an_empty_batch():
    encoder = MoleculeDMPNN(hidden=16, depth=3).eval()
    batch = encoder.collate([encoder.featurize("[Na+].[Cl-]"), None, encoder.featurize("C")])
    assert len(batch["bonds"]) == 0 and len(batch["src"]) == 0
    tokens = encoder(batch)
    assert tokens.mask.sum(1).tolist() == [2, 0, 1]
    assert torch.allclose(tokens.x, reference_forward(encoder, batch), atol=1e-6)
    assert encoder(encoder.collate([None, None])).x.shape == (2, 1, 16)


def test_collate_keeps_one_bond_row_per_bond_and_two_edges():
    graphs = [MoleculeDMPNN.featurize(s) for s in ("CCO", "c1ccccc1")]
    batch = MoleculeDMPNN.collate(graphs)
    assert batch["bonds"].shape == (2 + 6, len(BOND_FEATURES)) and batch["src"].shape == (2 * 8,)
    assert torch.equal(batch["src"].view(-1, 2).flip(1).reshape(-1), batch["dst"])  # edge 2k+1 is 2k reversed


def test_forward_under_bf16_autocast_keeps_the_reference_precision():
    # Training autocasts to bf16 on CUDA: the matrix products run in bf16 while the edge states, and the tokens,
    # stay float32 (an addmm would cast h0 to bf16 and make every state bf16). CPU autocast casts the same ops.
    torch.manual_seed(0)
    encoder = MoleculeDMPNN(hidden=64, depth=3)
    batch = encoder.collate([None if s is None else encoder.featurize(s) for s in FORWARD_BATCH])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = encoder(batch).x, reference_forward(encoder, batch)
    assert got.dtype == want.dtype == torch.float32
    assert (got - want).abs().max() < 1e-3 * max(1.0, want.abs().max())


def test_the_featurizer_benchmark_section_runs_on_a_few_smiles():
    import sys

    from tests.conftest import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from featurizer import featurizer_section

    report = featurizer_section(["CCO", "C1CC", "c1ccccc1O", "F[C@H](Cl)Br"], rounds=1)
    assert report["smiles"] == 4 and report["parsed"] == report["featurized"] == 3
    assert report["bare_parse_per_s"] > 0 and report["ours_per_s"] > 0 and report["ours_over_bare_parse"] > 0
    assert isinstance(report["chemprop"], str)
    assert ("chemprop_per_s" in report) == (not report["chemprop"].startswith("unavailable"))
