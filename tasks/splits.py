"""Train/validation/test splits, reproducible from a seed."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from rdkit import Chem

from encoders import ZooError


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


def matbench_folds(n_rows: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Matbench's 5-fold CV over ``n_rows`` rows: (training, test) positions of each fold, as matbench cuts them
    with ``KFold(5, shuffle=True, random_state=18012019)``."""
    from sklearn.model_selection import KFold

    return list(KFold(n_splits=5, shuffle=True, random_state=18012019).split(np.arange(n_rows)))


def matbench_split(keys: list, fractions: tuple[float, float, float], seed: int) -> tuple[np.ndarray, ...]:
    """Matbench's fold ``seed`` (``matbench_folds``) as the test set; a random ``fractions[1]`` share of the rest
    (seeded by the fold) is held out for validation."""
    rest, test = matbench_folds(len(keys))[seed]
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


# Splits a user gives rather than computes: each row's set named in a column, or row indices in a JSON file
# (chemprop's --splits-column and --splits-file). Both return indices into the table's rows.
GIVEN_SPLITS = ("column", "file")
_SET_NAMES = {"train": 0, "val": 1, "valid": 1, "validation": 1, "test": 2}


def column_split(labels: list, column: str, rows: np.ndarray) -> tuple[np.ndarray, ...]:
    """Positions in ``labels`` (each row's value of ``column``; ``rows``: their rows in the table, for messages) by
    the set each names: train, val (or valid, validation) or test, in any case."""
    parts: tuple[list[int], ...] = ([], [], [])
    for i, label in enumerate(labels):
        part = _SET_NAMES.get(label.strip().lower()) if isinstance(label, str) else None
        if part is None:
            raise ZooError(f"row {rows[i]}: split column {column!r} holds {label!r}; each row needs train, val or "
                           "test")
        parts[part].append(i)
    return tuple(np.array(p, dtype=int) for p in parts)


def file_split(path: str | Path, n_rows: int, seed: int) -> tuple[np.ndarray, ...]:
    """chemprop's splits file: a JSON list of {"train": [...], "val": [...], "test": [...]} (val and test may be
    absent), one per replicate; seed k takes the k-th. Indices are 0-based rows of the table, each an integer or
    a string of them and inclusive ranges ("0-2,4"). No row may be in two sets; rows in none are not used."""
    try:
        splits = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ZooError(f"split file {path}: cannot read it as JSON ({err})") from None
    splits = [splits] if isinstance(splits, dict) else splits
    if not isinstance(splits, list) or not all(isinstance(s, dict) and "train" in s for s in splits):
        raise ZooError(f"split file {path}: expected a list of {{'train': [...], 'val': [...], 'test': [...]}}")
    if not 0 <= seed < len(splits):
        raise ZooError(f"split file {path}: seed {seed} takes split {seed}, but the file has {len(splits)} "
                       f"(seeds 0-{len(splits) - 1})")
    parts, seen = [], {}
    for name in ("train", "val", "test"):
        index = _indices(splits[seed].get(name, []), f"split file {path}: split {seed} {name!r}")
        for i in index:
            if not 0 <= i < n_rows:
                raise ZooError(f"split file {path}: split {seed} {name!r} has row {i}; the table has {n_rows} rows")
            if seen.setdefault(i, name) != name:
                raise ZooError(f"split file {path}: split {seed}: row {i} is in both {seen[i]!r} and {name!r}")
        parts.append(np.array(index, dtype=int))
    return tuple(parts)


def _indices(value, where: str) -> list[int]:
    """[0, 1, 4] or "0-2,4" (chemprop's two spellings) -> a list of ints."""
    if isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        return value
    if not isinstance(value, str):
        raise ZooError(f"{where}: expected a list of row indices or a string such as '0-2,4', got {value!r}")
    out = []
    for item in value.split(","):
        start, _, end = item.strip().partition("-")
        try:
            out += range(int(start), int(end or start) + 1)
        except ValueError:
            raise ZooError(f"{where}: {item!r} is not a row index or a range such as '0-2'") from None
    return out
