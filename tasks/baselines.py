"""Reference models a benchmark runs beside ours on the same featurized rows and the same split, for data
sets without published numbers. A registry task names one with ``bench: {baseline: NAME}``.

Each is ``(features, targets, fit, test) -> test predictions``: ``features`` are the featurized rows (one
dict of modality -> feature per row), ``targets`` [N, n_targets], ``fit`` and ``test`` row indices; the
predictions take the form the task's head decodes to (values [N, targets], or class indices). A baseline
fits on training and validation rows together: it has nothing to early-stop.

scikit-learn and scipy are imported inside the baselines that use them: the registry imports this module on
every start (to check the names a task gives), and a prediction should not pay for them.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from rdkit import Chem, DataStructs
from rdkit.Chem import rdFingerprintGenerator

from encoders.molecule import ATOM_OFFSETS, BOND_OFFSETS, MolGraph
from encoders.spectrum import Spectrum

Baseline = Callable[[list[dict], np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _spectra(features: list[dict]) -> np.ndarray:
    return np.stack([f["spectrum"].intensity for f in features])


def spectrum_forest_classifier(features, targets, fit, test) -> np.ndarray:
    """500 trees on the resampled spectrum, classes weighted by inverse frequency (macro-F1 counts every class
    alike) -> class indices."""
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(n_estimators=500, class_weight="balanced", random_state=0, n_jobs=1)
    return forest.fit(_spectra(features)[fit], targets[fit, 0]).predict(_spectra(features)[test])


def spectrum_forest_regressor(features, targets, fit, test) -> np.ndarray:
    """One forest per target (scikit-learn's defaults: 100 trees) on the resampled spectrum, fitted on the rows
    that have that target."""
    from sklearn.ensemble import RandomForestRegressor

    x = _spectra(features)
    pred = np.empty((len(test), targets.shape[1]))
    for j, y in enumerate(targets.T):
        rows = fit[~np.isnan(y[fit])]
        pred[:, j] = RandomForestRegressor(random_state=0, n_jobs=1).fit(x[rows], y[rows]).predict(x[test])
    return pred


_BOND_TYPES = (Chem.BondType.SINGLE, Chem.BondType.DOUBLE, Chem.BondType.TRIPLE, Chem.BondType.AROMATIC,
               Chem.BondType.OTHER)


def graph_to_mol(graph: MolGraph) -> Chem.Mol:
    """An RDKit molecule back from the D-MPNN's features (elements, charges, hydrogens, aromaticity, bond
    orders), which is all a Morgan fingerprint looks at: a baseline sees featurized rows, not SMILES."""
    mol = Chem.RWMol()
    for number, charge, hs, aromatic in (graph.atoms - ATOM_OFFSETS)[:, [0, 2, 4, 6]].tolist():
        atom = Chem.Atom(number)
        atom.SetFormalCharge(charge - 3)
        atom.SetNumExplicitHs(hs)
        atom.SetNoImplicit(True)
        atom.SetIsAromatic(bool(aromatic))
        mol.AddAtom(atom)
    for (begin, end), kind in zip(graph.pairs.tolist(), (graph.bonds - BOND_OFFSETS)[:, 0].tolist()):
        mol.AddBond(begin, end, _BOND_TYPES[kind])
        mol.GetBondBetweenAtoms(begin, end).SetIsAromatic(kind == 3)
    mol.UpdatePropertyCache(strict=False)
    mol = Chem.RemoveHs(mol, sanitize=False)  # [H] written as an atom counts as its neighbour's hydrogen
    Chem.FastFindRings(mol)
    return mol


def _of_type(features: list[dict], kind: type) -> list:
    name = next(n for n, f in features[0].items() if isinstance(f, kind))
    return [f[name] for f in features]


def _pairs_over_test_compounds(scores: np.ndarray, compound: np.ndarray) -> np.ndarray:
    """Scores of each test query for each test compound -> (query, candidate) pairs whose dot products are
    those scores: a candidate embeds as the one-hot of its compound."""
    return np.stack([scores, np.eye(scores.shape[1])[compound]], 1)


def spectrum_nearest_analogue(features, targets, fit, test) -> np.ndarray:
    """Spectral library search, then an analogue search: each test spectrum's nearest training spectrum by
    cosine similarity of the binned spectra (as the spectrum encoder bins them), whose molecule then ranks the
    test candidates by Tanimoto similarity of Morgan fingerprints (radius 2, 2048 bits). The nearest spectrum's
    own molecule is never a candidate (the split keeps compounds apart), so this asks how far "looks like a
    known spectrum" gets. Ties are broken at random (seeded), as the rank metrics count only strictly better
    candidates.

    ``targets`` hold each row's compound id (the contrastive head's groups); the predictions are (query,
    candidate) pairs over the test compounds (``_pairs_over_test_compounds``), as the retrieval metrics take."""
    from scipy import sparse
    from sklearn.preprocessing import normalize

    spectra = sparse.csr_matrix(np.stack([s.intensity for s in _of_type(features, Spectrum)]))
    spectra = normalize(spectra)  # unit rows: dot products are cosines
    nearest = fit[np.asarray((spectra[test] @ spectra[fit].T).argmax(1)).ravel()]
    groups, first, compound = np.unique(targets[test, 0], return_index=True, return_inverse=True)
    graphs = _of_type(features, MolGraph)
    morgan = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    candidates = [morgan.GetFingerprint(graph_to_mol(graphs[test[i]])) for i in first]
    fingerprint = {}
    scores = np.empty((len(test), len(groups)))
    for row, source in enumerate(nearest):
        if source not in fingerprint:
            fingerprint[source] = np.array(DataStructs.BulkTanimotoSimilarity(
                morgan.GetFingerprint(graph_to_mol(graphs[source])), candidates))
        scores[row] = fingerprint[source]
    # Distinct Tanimoto values (ratios of bit counts up to 2048) differ by over 2e-7: the jitter only breaks ties.
    scores += np.random.default_rng(0).uniform(0, 1e-9, scores.shape)
    return _pairs_over_test_compounds(scores, compound)


def precursor_mass_match(features, targets, fit, test) -> np.ndarray:
    """No learning: rank the test candidates by how close their monoisotopic mass (input ``mass``) is to the
    spectrum's neutral precursor mass (input ``precursor``). Shows how much of msms-to-molecule the precursor
    alone decides when the candidates are the distinct test molecules (few share a mass within mDa)."""
    _, first, compound = np.unique(targets[test, 0], return_index=True, return_inverse=True)
    query = np.array([features[i]["precursor"].numbers[0] for i in test], float)
    candidate = np.array([features[test[i]]["mass"].numbers[0] for i in first], float)
    return _pairs_over_test_compounds(-np.abs(query[:, None] - candidate[None, :]), compound)


BASELINES: dict[str, Baseline] = {
    "spectrum-random-forest-classifier": spectrum_forest_classifier,
    "spectrum-random-forest-regressor": spectrum_forest_regressor,
    "spectrum-nearest-analogue": spectrum_nearest_analogue,
    "precursor-mass-match": precursor_mass_match,
}
