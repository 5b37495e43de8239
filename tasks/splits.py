"""Train/validation/test splits, reproducible from a seed."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
from rdkit import Chem


def random_split(keys: list, fractions: tuple[float, float, float], seed: int) -> tuple[np.ndarray, ...]:
    n = len(keys)
    order = np.random.default_rng(seed).permutation(n)
    n_train, n_val = int(round(fractions[0] * n)), int(round(fractions[1] * n))
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]


def scaffold_split(smiles: list[str], fractions: tuple[float, float, float], seed: int) -> tuple[np.ndarray, ...]:
    """Bemis-Murcko scaffold split, balanced as in chemprop: no scaffold is in two sets.

    Scaffold sets too big for half the validation or test set go to training first; the rest are shuffled.
    Molecules that do not parse share one scaffold (the empty one).
    """
    from rdkit.Chem.Scaffolds import MurckoScaffold  # imports all of AllChem: only when a split needs it

    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s) if isinstance(s, str) else None
        groups[MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False) if mol else ""].append(i)
    n = len(smiles)
    n_train, n_val = fractions[0] * n, fractions[1] * n
    n_test = n - n_train - n_val
    sets = list(groups.values())
    big = [s for s in sets if len(s) > n_val / 2 or len(s) > n_test / 2]
    small = [s for s in sets if not (len(s) > n_val / 2 or len(s) > n_test / 2)]
    rng = np.random.default_rng(seed)
    rng.shuffle(big)
    rng.shuffle(small)
    train, val, test = [], [], []
    for group in big + small:
        if len(train) + len(group) <= n_train:
            train += group
        elif len(val) + len(group) <= n_val:
            val += group
        else:
            test += group
    return np.array(train, dtype=int), np.array(val, dtype=int), np.array(test, dtype=int)


def matbench_split(keys: list, fractions: tuple[float, float, float], seed: int) -> tuple[np.ndarray, ...]:
    """Matbench's 5-fold CV: ``seed`` picks the test fold of ``KFold(5, shuffle=True, random_state=18012019)``;
    a random ``fractions[1]`` share of the rest (seeded by the fold) is held out for validation."""
    from sklearn.model_selection import KFold

    folds = list(KFold(n_splits=5, shuffle=True, random_state=18012019).split(np.arange(len(keys))))
    rest, test = folds[seed]
    rest = np.random.default_rng(seed).permutation(rest)
    n_val = int(round(fractions[1] * len(keys)))
    return np.sort(rest[n_val:]), np.sort(rest[:n_val]), test


def stratified_split(labels: list, fractions: tuple[float, float, float], seed: int) -> tuple[np.ndarray, ...]:
    """Each class (the split key: a label column) is shuffled and cut in ``fractions``, rounded per class, so
    every set keeps the class mix of the whole. A class too small to give a set one row (below about
    1 / (2 * fraction)) leaves that set without it: the rarest classes are in training only."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        groups[str(label)].append(i)
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for members in groups.values():
        members = rng.permutation(members).tolist()
        n_val, n_test = (int(f * len(members) + 0.5) for f in fractions[1:])
        n_val = min(n_val, len(members) - 1)  # a class always keeps one training row
        n_test = min(n_test, len(members) - 1 - n_val)
        val += members[:n_val]
        test += members[n_val : n_val + n_test]
        train += members[n_val + n_test :]
    return np.array(train, dtype=int), np.array(val, dtype=int), np.array(test, dtype=int)


def group_split(groups: list, fractions: tuple[float, float, float], seed: int) -> tuple[np.ndarray, ...]:
    """Whole groups (the split key: a compound's first InChIKey block, say) go to one set each, so no group is
    in two sets. The distinct groups are shuffled (seeded) and cut in ``fractions`` of the *groups*, rounded;
    a set's share of rows then follows the groups' sizes. Rows without a key each form their own group."""
    index: dict[object, list[int]] = defaultdict(list)
    for i, key in enumerate(groups):
        missing = key is None or (isinstance(key, float) and np.isnan(key)) or not str(key).strip()
        index[("row", i) if missing else key].append(i)
    members = list(index.values())
    order = np.random.default_rng(seed).permutation(len(members))
    n_train, n_val = int(round(fractions[0] * len(members))), int(round(fractions[1] * len(members)))
    cut = (order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :])
    return tuple(np.array(sorted(i for g in part for i in members[g]), dtype=int) for part in cut)


# Each takes the split key of every row (SMILES for scaffolds, the class for stratified, the group for group),
# the three fractions and a seed.
SPLITS = {"random": random_split, "scaffold": scaffold_split, "matbench-kfold": matbench_split,
          "stratified": stratified_split, "group": group_split}
