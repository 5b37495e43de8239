"""Property-based fuzzing of the parsers (SMILES, formula, CIF, spectrum), of collate + forward, and of whole bundled
models: whatever the input, nothing but an InputError escapes a parser, whatever is accepted gives finite features
and finite tokens, and ``predict`` answers every row with a result or a per-row error.

Examples are bounded and derandomized (the same ones on every run), so the file takes seconds in CI.
"""
from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from encoders import InputError
from encoders.composition import CompositionEncoder
from encoders.crystal import CrystalCGCNN
from encoders.molecule import ATOM_FEATURES, MoleculeDMPNN
from encoders.spectrum import SpectrumCNN
from tests.conftest import ROOT, TEXTBOOK

FUZZ = settings(max_examples=150, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
FEW = settings(FUZZ, max_examples=40)

SMILES_CHARS = "CNOSPFIBrcnos()[]=#@+-\\/%.0123456789H*:"
FORMULA_CHARS = "HCNOSiFeNaClTiSrBaXx()[]{}.0123456789e+- "
ANY_TEXT = st.text(st.characters() | st.characters(categories=["Cs"]), max_size=60)  # lone surrogates too


def featurized(featurize, raw):
    """``featurize(raw)``, or None when it refuses with an InputError (any other exception fails the test)."""
    try:
        return featurize(raw)
    except InputError as err:
        assert err.why and "\n" not in str(err)
        return None


def _finite(features) -> None:
    for name, value in vars(features).items():
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.isfinite(value).all(), name


@FUZZ
@given(st.text(SMILES_CHARS, max_size=40) | ANY_TEXT)
def test_smiles(text):
    graph = featurized(MoleculeDMPNN.featurize, text)
    if graph is not None:
        _finite(graph)
        assert len(graph.atoms) >= 1 and (graph.pairs < len(graph.atoms)).all()
        assert (graph.atoms < sum(n for _, n in ATOM_FEATURES)).all()


@FUZZ
@given(st.text(FORMULA_CHARS, max_size=30) | ANY_TEXT)
def test_formula(text):
    comp = featurized(CompositionEncoder(dim=8, layers=1, oxidation=True).featurize, text)  # the charge balance too
    if comp is not None:
        _finite(comp)
        assert len(comp.z) >= 1 and math.isclose(comp.fraction.sum(), 1.0, rel_tol=1e-5)


CIF = """data_x
_symmetry_space_group_name_H-M 'P 1'
_cell_length_a {a}
_cell_length_b {b}
_cell_length_c {c}
_cell_angle_alpha {alpha}
_cell_angle_beta {beta}
_cell_angle_gamma {gamma}
loop_
_atom_site_type_symbol
_atom_site_label
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
{sites}
"""
LENGTHS = st.sampled_from(["0", "-3", "1e-9", "nan", "inf", "1e300", "abc", ""]) | st.floats(0.1, 30).map(str)
ANGLES = st.sampled_from(["0", "180", "nan", "360", "-90"]) | st.floats(30, 150).map(str)
SITE = st.tuples(st.sampled_from(["Na", "Cl", "Si", "Xx", "D", "Og", "?"]),
                 *[st.sampled_from(["0", "0.5", "nan", "inf", "1e308", "x"]) | st.floats(-1, 2).map(str)] * 3,
                 st.sampled_from(["1", "0.5", "0", "2", "-1"]))


@FEW
@given(LENGTHS, LENGTHS, LENGTHS, ANGLES, ANGLES, ANGLES, st.lists(SITE, max_size=6))
def test_cif_text(a, b, c, alpha, beta, gamma, sites):
    text = CIF.format(a=a, b=b, c=c, alpha=alpha, beta=beta, gamma=gamma,
                      sites="\n".join(f"{s[0]} {s[0]}{i} {s[1]} {s[2]} {s[3]} {s[4]}" for i, s in enumerate(sites)))
    graph = featurized(CrystalCGCNN(max_neighbors=4).featurize, text)
    if graph is not None:
        _finite(graph)
        assert len(graph.z) >= 1 and (graph.distance <= 8.0 + 1e-4).all()


@FEW
@given(st.integers(0, 2000), st.integers(0, 400), st.text(max_size=20))
def test_cif_cut_and_spliced(start, length, junk):
    """The example CIFs, with a stretch cut out and junk put in its place (a truncated or damaged file)."""
    text = (ROOT / "examples" / "crystals" / "BaTiO3.cif").read_text()
    damaged = text[:start] + junk + text[start + length:]
    graph = featurized(CrystalCGCNN(max_neighbors=4).featurize, damaged)
    if graph is not None:
        _finite(graph)


GRID = {"axis_min": 0.0, "axis_max": 99.0, "points": 100, "segments": 10, "dim": 8, "channels": 4, "layers": 2}
SPECTRA = [SpectrumCNN(**GRID, normalize=n) for n in ("none", "max", "snv")] + [SpectrumCNN(**GRID, mode="peaks")]
VALUES = st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=120)
SPECTRUM_INPUTS = (
    VALUES
    | st.lists(st.floats(-1e6, 1e6), min_size=100, max_size=100)
    | st.builds(lambda a, i: {"axis": a, "intensity": i}, VALUES, VALUES)
    | st.lists(st.tuples(st.floats(-50, 150), st.floats(-1e300, 1e300)), min_size=1, max_size=40).map(np.array)
    | st.recursive(st.floats() | st.text(max_size=3) | st.none(), lambda kids: st.lists(kids, max_size=4)
                   | st.dictionaries(st.sampled_from(["axis", "intensity", "x"]), kids, max_size=3)).map(json.dumps)
    | st.text(max_size=30)
)


@FUZZ
@given(st.sampled_from(range(len(SPECTRA))), SPECTRUM_INPUTS)
def test_spectrum(which, raw):
    spectrum = featurized(SPECTRA[which].featurize, raw)
    if spectrum is not None:
        _finite(spectrum)
        assert spectrum.intensity.shape == (100,) and spectrum.covered.any()


# -- collate and forward: random masks, rows without tokens, batches without any ---------------------------
@pytest.fixture(scope="module")
def pools():
    """Each encoder with a few valid features of its modality."""
    torch.manual_seed(0)
    cifs = [str(p) for p in sorted((ROOT / "examples" / "crystals").glob("*.cif"))]
    built = {
        "molecule": (MoleculeDMPNN(hidden=16), TEXTBOOK[:8] + ["[Na+].[Cl-]", "C"]),
        "composition": (CompositionEncoder(dim=16, heads=2), ["NaCl", "SrTiO3", "Fe", "H2O", "U0.001Pu0.999"]),
        "crystal": (CrystalCGCNN(dim=16, layers=2, max_neighbors=4), cifs),
        "spectrum": (SpectrumCNN(**GRID), [list(range(100)), {"axis": [10.0, 20.0], "intensity": [1.0, 2.0]}]),
    }
    return {name: (enc.eval(), [enc.featurize(raw) for raw in raws]) for name, (enc, raws) in built.items()}


@FEW
@given(st.sampled_from(["molecule", "composition", "crystal", "spectrum"]), st.lists(st.integers(-1, 9), max_size=7))
def test_collate_and_forward_with_random_masks(pools, modality, picks):
    """-1 is a row without this modality; a batch may be empty or hold no row with tokens."""
    encoder, pool = pools[modality]
    rows = [None if i < 0 else pool[i % len(pool)] for i in picks]
    with torch.no_grad():
        tokens = encoder(encoder.collate(rows))
    assert tokens.x.shape[0] == tokens.mask.shape[0] == len(rows)
    assert torch.isfinite(tokens.x).all()
    for row, mask in zip(rows, tokens.mask):
        assert bool(mask.any()) == (row is not None)


# -- whole models: random rows into the bundled models' predict -----------------------------------------------
# Characters a tokenizer drops (control, zero-width, combining, U+FFFD, format) mixed with a few it keeps, so many
# rows hold no token at all: such a row is a per-row error, never an exception that loses the batch.
DROPPED_CHARS = "\x00\x01\x07\x1f\x7f\u200b\u200c\u200d\u2060\ufeff\u00ad\u202e\u0301\u0302\u20dd\ufffd \t\n"
TEXTS = ANY_TEXT | st.text(st.sampled_from(DROPPED_CHARS), max_size=8) | st.text(DROPPED_CHARS + "aZ1-", max_size=12)
PER_CALL = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))  # 20 calls of 100 rows: 2,000 rows per test


@functools.cache
def bundled(task: str):
    import zoo

    return zoo.load(task)


def _every_row_answered(rows: list[dict], out: list[dict], keys: set[str]) -> None:
    assert len(out) == len(rows)
    for result in out:
        if "error" in result:
            assert result["error"] and "\n" not in result["error"], result
        else:
            assert keys <= set(result), result


@pytest.mark.parametrize("task", ["bio-ner", "bio-ner-chem"])
@PER_CALL
@given(texts=st.lists(TEXTS, min_size=100, max_size=100))
def test_bundled_taggers_answer_every_text(task, texts):
    rows = [{"text": t} for t in texts]
    _every_row_answered(rows, bundled(task).predict(rows), {"entities"})


@PER_CALL
@given(smiles=st.lists(st.text(SMILES_CHARS, max_size=40) | ANY_TEXT, min_size=100, max_size=100))
def test_bundled_solubility_answers_every_smiles(smiles):
    rows = [{"smiles": s} for s in smiles]
    model = bundled("molecule-solubility")
    _every_row_answered(rows, model.predict(rows), set(model.spec.head.targets))
