import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from encoders import InputError
from encoders.composition import CompositionEncoder
from encoders.crystal import CrystalCGCNN, parse_structure
from tests.conftest import ROOT

CIFS = sorted((ROOT / "examples" / "crystals").glob("*.cif"))


def test_example_cifs_parse_to_textbook_cells():
    formulas = {p.stem: parse_structure(str(p)).composition.reduced_formula for p in CIFS}
    assert formulas == {"BaTiO3": "BaTiO3", "NaCl": "NaCl", "Si": "Si", "SrTiO3": "SrTiO3"}


def test_structure_accepted_as_object_dict_json_cif_and_poscar_text():
    s = parse_structure(str(ROOT / "examples" / "crystals" / "NaCl.cif"))
    for raw in (s, s.as_dict(), s.to_json(), s.to(fmt="cif"), s.to(fmt="poscar")):
        assert parse_structure(raw).composition == s.composition


@pytest.mark.parametrize("raw, why", [
    ("data_x\n_cell_length_a 3\nloop_\n", "cannot read structure"),
    ("missing.cif", "no such file"),
    ("NaCl", "neither a structure file"),
    ({"sites": []}, "missing key 'lattice'"),
    (Structure(Lattice.cubic(3.0), [], []), "no sites"),
    (Structure(Lattice.cubic(3.6), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]]), "disordered structure"),
    (7, "got int"),
])
def test_bad_structures_are_input_errors(raw, why):
    with pytest.raises(InputError, match=why) as err:
        CrystalCGCNN().featurize(raw)
    assert err.value.modality == "crystal"


def test_cgcnn_neighbour_graph_respects_cutoff_and_max_neighbours():
    encoder = CrystalCGCNN(dim=16, cutoff=4.0, max_neighbors=6)
    g = encoder.featurize(str(ROOT / "examples" / "crystals" / "NaCl.cif"))
    assert sorted(g.z.tolist()) == [11, 17]
    assert np.bincount(g.center).tolist() == [6, 6]          # octahedral rock-salt neighbours
    assert np.allclose(g.distance, 2.82, atol=0.01)           # a / 2


def test_cgcnn_tokens_masks_and_cell_choice_invariance():
    encoder = CrystalCGCNN(dim=16).eval()
    nacl = parse_structure(str(ROOT / "examples" / "crystals" / "NaCl.cif"))
    conventional = nacl.copy()
    conventional.make_supercell([2, 2, 2])
    tokens = encoder(encoder.collate([encoder.featurize(nacl), None, encoder.featurize(conventional)]))
    assert tokens.mask.sum(1).tolist() == [2, 0, 16]
    # The same crystal in a bigger cell gives the same per-atom features (a periodic graph, not a molecule).
    small = tokens.x[0, :2].sort(0).values
    big = tokens.x[2, :16].detach().unique(dim=0).sort(0).values
    torch.testing.assert_close(small, big, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("raw, why", [
    ("Xx2O", "unknown element 'Xx'"), ("G1128Ga1As0.1P0.9", "unknown element 'G'"),
    ("Fe2O3)", "cannot parse formula"), ("", "empty formula"), (3, "got int"),
])
def test_bad_formulas_are_input_errors(raw, why):
    with pytest.raises(InputError, match=why):
        CompositionEncoder(dim=16, layers=1).featurize(raw)


def test_composition_tokens_are_fractional_and_order_free():
    encoder = CompositionEncoder(dim=16, layers=1).eval()
    a, b = encoder.featurize("Fe2O3"), encoder.featurize("O6Fe4")
    assert a.z.tolist() == [8, 26] and np.allclose(a.fraction, [0.6, 0.4])
    tokens = encoder(encoder.collate([a, None, b]))
    assert tokens.mask.sum(1).tolist() == [2, 0, 2]
    assert torch.isfinite(tokens.x).all()
    torch.testing.assert_close(tokens.x[0], tokens.x[2])


@pytest.mark.parametrize("symbol, counts", [
    # s, p, d, f held outside the noble-gas core, their sum; empty places in each partly filled orbital, their sum
    ("O", [2, 4, 0, 0, 6, 0, 2, 0, 0, 2]),
    ("Fe", [2, 0, 6, 0, 8, 0, 0, 4, 0, 4]),
    ("Ga", [2, 1, 10, 0, 13, 0, 5, 0, 0, 5]),
    ("Ce", [2, 0, 1, 1, 4, 0, 0, 9, 13, 22]),
])
def test_magpie_valence_counts_read_pymatgens_electronic_structure(symbol, counts):
    from pymatgen.core import Element

    from encoders.composition import _valence

    assert _valence(Element(symbol)) == counts


def test_magpie_adds_twelve_element_properties():
    plain, magpie = CompositionEncoder(dim=16, layers=1), CompositionEncoder(dim=16, layers=1, magpie=True)
    assert magpie.properties.shape[1] == plain.properties.shape[1] + 12
    assert torch.isfinite(magpie.properties).all() and not magpie.properties[0].any()


@pytest.mark.parametrize("formula, states", [
    ("NaCl", {"Na": 1, "Cl": -1}),
    ("Fe2O3", {"O": -2, "Fe": 3}),
    ("GaAs", {"Ga": 3, "As": -3}),
    ("Al0.01Cd0.99Sb0.01Te0.99", {"Al": 3, "Cd": 2, "Sb": -3, "Te": -2}),  # fractional, as expt_gap writes alloys
    ("Cu3Au", None),  # an intermetallic: no common states make it neutral
    ("Fe3O4", None),  # mixed valence (Fe2+ and Fe3+) needs two states of one element: not counted as balanced
])
def test_oxidation_gives_each_element_its_state_when_the_compound_can_be_neutral(formula, states):
    from pymatgen.core import Element

    features = CompositionEncoder(dim=16, layers=1, oxidation=True).featurize(formula)
    got = {Element.from_Z(int(z)).symbol: tuple(row) for z, row in zip(features.z, features.oxidation)}
    want = {s: (0.0, 0.0) for s in got} if states is None else {s: (float(v), 1.0) for s, v in states.items()}
    assert got == want


def test_oxidation_is_off_by_default_and_its_tokens_change_the_output_when_on():
    plain = CompositionEncoder(dim=16, layers=1)
    assert plain.featurize("NaCl").oxidation.shape == (2, 0) and plain.charge is None
    torch.manual_seed(0)
    encoder = CompositionEncoder(dim=16, layers=1, oxidation=True).eval()
    # NaCl and NaCl's formula with the charge balance taken away differ only in it
    features = [encoder.featurize("NaCl"), None, encoder.featurize("NaCl")]
    features[2].oxidation = np.zeros_like(features[2].oxidation)
    tokens = encoder(encoder.collate(features))
    assert tokens.mask.tolist() == [[True, True], [False, False], [True, True]]
    assert not torch.allclose(tokens.x[0], tokens.x[2])
    assert encoder(encoder.collate([None])).x.shape == (1, 1, 16)  # a batch without compositions still runs


def test_chgnet_elements_add_chgnets_learned_element_embedding_to_the_properties():
    from encoders.crystal import chgnet_backbone

    plain, pretrained = CompositionEncoder(dim=16, layers=1), CompositionEncoder(dim=16, layers=1, chgnet_elements="0.3.0")
    extra = pretrained.properties[:, plain.properties.shape[1]:]
    embedding = chgnet_backbone("0.3.0").atom_embedding.embedding.weight  # row z - 1 is element z
    assert extra.shape == (plain.properties.shape[0], embedding.shape[1])
    standardised = (embedding - embedding.mean(0)) / (embedding.std(0, unbiased=False) + 1e-8)
    torch.testing.assert_close(extra[1:95], standardised.detach())
    assert not extra[0].any() and not extra[95:].any()  # no element 0, and none past CHGNet's 94
    assert "properties" not in pretrained.state_dict()  # rebuilt from the wheel at load, never saved


def test_composition_of_a_structure_equals_its_formula():
    cif = str(ROOT / "examples" / "crystals" / "SrTiO3.cif")
    encoder = CompositionEncoder(dim=16, layers=1)
    from_cif, from_formula = encoder.featurize(cif), encoder.featurize("SrTiO3")
    from_dict = encoder.featurize(parse_structure(cif).as_dict())
    for got in (from_cif, from_dict):
        assert got.z.tolist() == from_formula.z.tolist() and np.allclose(got.fraction, from_formula.fraction)


def test_chgnet_transfer_gives_pretrained_atom_features_for_the_example_cells():
    from encoders.crystal import CrystalCHGNet, chgnet_backbone

    encoder = CrystalCHGNet(dim=16).eval()
    feats = [encoder.featurize(str(p)) for p in CIFS]
    assert [len(f.z) for f in feats] == [5, 2, 2, 5]           # BaTiO3, NaCl (primitive), Si, SrTiO3
    assert all(f.features.shape[1] == 129 and np.isfinite(f.features).all() for f in feats)
    # The last feature is CHGNet's site energy: per cell, they add up to the total energy CHGNet predicts.
    backbone = chgnet_backbone("0.3.0")
    for path, f in zip(CIFS, feats):
        structure = parse_structure(str(path))
        energy = backbone.predict_structure(structure, task="e")["e"] * len(structure)  # eV/atom -> eV
        assert f.features[:, -1].sum() == pytest.approx(energy, abs=1e-3)
    # Pretrained features tell Na from Cl and Ba from Sr even before any training here.
    nacl = feats[1].features
    assert not np.allclose(nacl[0], nacl[1])
    tokens = encoder(encoder.collate(feats[:2] + [None]))
    assert tokens.mask.sum(1).tolist() == [5, 2, 0]
    assert "chgnet==" in encoder.backbone and not any("backbone" in k for k in encoder.state_dict())
    with pytest.raises(InputError, match="disordered"):
        encoder.featurize(Structure(Lattice.cubic(3.6), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]]))
