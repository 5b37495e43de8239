import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem.Scaffolds import MurckoScaffold

from fusion import Fused
from tasks import MultiLabelHead, RegressionHead, random_split, scaffold_split, score
from tasks.splits import matbench_split
from tests.conftest import TEXTBOOK


def test_regression_loss_ignores_missing_targets_and_standardises():
    head = RegressionHead(4, targets={"a": "a", "b": "b"})
    head.fit(np.array([[1.0, 10.0], [3.0, np.nan], [5.0, 30.0]]))
    assert head.mean.tolist() == [3.0, 20.0]
    raw = torch.zeros(2, 2)
    mask = torch.tensor([[True, False], [True, False]])
    l1 = head.loss(raw, torch.tensor([[3.0, 0.0], [3.0, 0.0]]), mask)
    l2 = head.loss(raw, torch.tensor([[3.0, 999.0], [3.0, -5.0]]), mask)
    assert l1.item() == l2.item() == 0.0
    torch.testing.assert_close(head.decode(torch.zeros(1, 2)), torch.tensor([[3.0, 20.0]]))


def test_multilabel_loss_masks_and_decodes_to_probabilities():
    head = MultiLabelHead(4, targets={"x": "x", "y": "y"})
    raw = torch.tensor([[10.0, -3.0]])
    masked = head.loss(raw, torch.tensor([[1.0, 1.0]]), torch.tensor([[True, False]]))
    assert masked.item() < 1e-3
    probs = head.decode(head(Fused(torch.randn(5, 4), {}, {})))
    assert ((probs >= 0) & (probs <= 1)).all()
    with pytest.raises(ValueError):
        head.fit(np.array([[0.0], [2.0]]))


def test_metrics_by_hand_and_with_missing_targets():
    y = np.array([[1.0], [2.0], [np.nan], [4.0]])
    p = np.array([[1.0], [3.0], [100.0], [2.0]])
    assert score("rmse", y, p) == pytest.approx(np.sqrt((0 + 1 + 4) / 3))
    assert score("mae", y, p) == pytest.approx(1.0)
    assert score("roc_auc", np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert score("r2", np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(1.0)


def test_random_split_is_disjoint_complete_and_seeded():
    keys = list(range(100))
    tr, va, te = random_split(keys, (0.8, 0.1, 0.1), seed=0)
    assert (len(tr), len(va), len(te)) == (80, 10, 10)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == keys
    assert np.array_equal(tr, random_split(keys, (0.8, 0.1, 0.1), seed=0)[0])
    assert not np.array_equal(tr, random_split(keys, (0.8, 0.1, 0.1), seed=1)[0])


def test_scaffold_split_never_puts_one_scaffold_in_two_sets():
    smiles = TEXTBOOK * 2
    parts = scaffold_split(smiles, (0.6, 0.2, 0.2), seed=0)
    scaffold = lambda i: MurckoScaffold.MurckoScaffoldSmiles(mol=Chem.MolFromSmiles(smiles[i]))
    sets = [{scaffold(i) for i in part} for part in parts]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sum(len(p) for p in parts) == len(smiles)


def test_a_row_that_cannot_be_featurized_leaves_the_matbench_folds_as_published():
    from zoo.registry import DataSpec
    from zoo.train import Prepared, split

    kept = np.array([i for i in range(103) if i != 40])  # row 40 failed to featurize
    data = Prepared(features=[{}] * len(kept), targets=np.zeros(len(kept)), keys=kept.tolist(), rows=kept, n_rows=103)
    for fold in range(5):
        published = set(matbench_split(list(range(103)), (0.7, 0.1, 0.2), fold)[2].tolist()) - {40}
        spec = DataSpec(dataset="toy", file="t.csv", split="matbench-kfold", fractions=(0.7, 0.1, 0.2))
        assert set(kept[split(data, spec, fold)[2]].tolist()) == published


def test_matbench_split_uses_the_published_kfold_and_covers_every_row_once():
    from sklearn.model_selection import KFold

    keys = list(range(103))
    tests = [matbench_split(keys, (0.7, 0.1, 0.2), fold)[2] for fold in range(5)]
    assert sorted(np.concatenate(tests).tolist()) == keys
    expected = next(iter(KFold(5, shuffle=True, random_state=18012019).split(keys)))[1]
    assert np.array_equal(np.sort(tests[0]), np.sort(expected))
    train, val, test = matbench_split(keys, (0.7, 0.1, 0.2), 0)
    assert not set(train) & set(val) and not (set(train) | set(val)) & set(test)
