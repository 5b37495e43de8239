import numpy as np
import pytest
import torch

from encoders import InputError
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
