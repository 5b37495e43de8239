"""Spectrum encoder, classification head and metrics, the stratified split, and the spectral readers."""
import csv
import json

import numpy as np
import pytest
import torch
from astropy.io import fits

import zoo
from encoders import InputError
from encoders.spectrum import SpectrumCNN
from fusion import Fused
from tasks import READERS, score
from tasks.heads import ClassificationHead
from tasks.splits import stratified_split
from tests.conftest import SHARED_DATA
from zoo.tables import read_rows

GRID = {"axis_min": 0, "axis_max": 99, "points": 100, "segments": 10, "dim": 16, "channels": 8, "layers": 2}


def encoder(**config) -> SpectrumCNN:
    return SpectrumCNN(**{**GRID, **config})


def test_featurize_collate_forward_shapes_and_missing_row_masked():
    enc = encoder()
    s = enc.featurize(list(range(100)))
    assert s.intensity.shape == (100,) and s.intensity.dtype == np.float32 and s.covered.all()
    tokens = enc(enc.collate([s, None]))
    assert tokens.x.shape == (2, 10, 16)
    assert tokens.mask[0].all() and not tokens.mask[1].any()


def test_an_axis_is_interpolated_onto_the_grid_and_uncovered_segments_are_masked():
    enc = encoder()
    axis = np.linspace(-10.0, 50.0, 121)  # every 0.5, reaching grid points 0..50 only
    s = enc.featurize({"axis": axis[::-1].tolist(), "intensity": (2 * axis + 1)[::-1].tolist()})  # unsorted is fine
    np.testing.assert_allclose(s.intensity[:51], 2 * np.arange(51) + 1, rtol=1e-6)
    assert s.covered[:51].all() and not s.covered[51:].any() and not s.intensity[51:].any()
    mask = enc(enc.collate([s])).mask[0]
    assert mask.tolist() == [True] * 6 + [False] * 4  # segment 5 (points 50-59) holds point 50
    pairs = enc.featurize(np.stack([axis, 2 * axis + 1], 1))  # (axis, intensity) columns
    np.testing.assert_array_equal(pairs.intensity, s.intensity)


def test_peak_lists_are_binned():
    s = encoder(mode="peaks").featurize({"axis": [10.2, 9.9, 42.0, 500.0], "intensity": [1.0, 2.0, 5.0, 9.0]})
    assert s.intensity[10] == pytest.approx(3.0) and s.intensity[42] == 5.0 and s.intensity.sum() == 8.0
    with pytest.raises(InputError, match="no peak within the grid"):
        encoder(mode="peaks").featurize({"axis": [500.0], "intensity": [1.0]})


def test_normalisations():
    x = np.linspace(1.0, 3.0, 100)
    assert encoder(normalize="max").featurize(x).intensity.max() == pytest.approx(1.0)
    assert np.abs(encoder(normalize="area").featurize(x).intensity).mean() == pytest.approx(1.0)
    snv = encoder(normalize="snv").featurize(x).intensity
    assert snv.mean() == pytest.approx(0.0, abs=1e-6) and snv.std() == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(InputError, match="flat spectrum"):
        encoder(normalize="snv").featurize(np.ones(100))


@pytest.mark.parametrize("raw, why", [
    (list(range(99)), "wrong length: 99 values but the grid has 100 points; give an axis"),
    ([1.0] * 50 + [float("nan")] + [1.0] * 49, "NaN or inf"),
    ([1.0] * 99 + [float("inf")], "NaN or inf"),
    ({"axis": [1.0, float("nan")], "intensity": [1.0, 2.0]}, "NaN or inf"),
    ({"axis": [1.0, 2.0, 3.0], "intensity": [1.0, 2.0]}, "3 axis values but 2 intensities"),
    ({"axis": [200.0, 300.0], "intensity": [1.0, 2.0]}, "does not overlap the grid"),
    (["a"] * 100, "not all numbers"),
    ("spectrum.txt", "neither a spectrum file"),
    ("missing.npy", "no such file"),
])
def test_bad_spectra_are_one_line_input_errors(raw, why):
    with pytest.raises(InputError) as err:
        encoder().featurize(raw)
    assert err.value.modality == "spectrum" and why in err.value.why and "\n" not in str(err.value)


def test_bad_rows_get_their_error_and_the_rest_are_predicted():
    model = zoo.ZooModel(zoo.info("asteroid-taxonomy"))
    out = model.predict([{"spectrum": [1.0] * 400}, {"spectrum": [1.0] * 401}, {"spectrum": None}])
    assert out[0]["error"].startswith("spectrum: column 'spectrum': wrong length: 400 values")
    assert set(out[1]) == {"taxonomy", "taxonomy_probability", "taxonomy_entropy"}  # an untrained model: no trust summary
    assert "every input is empty" in out[2]["error"]


def test_fits_image_hdu_with_wcs_axis_in_another_unit(tmp_path):
    path = tmp_path / "spectrum.fits"
    hdu = fits.PrimaryHDU(np.linspace(1.0, 2.0, 50).astype(">f4"))
    hdu.header.update(CRVAL1=100.0, CDELT1=10.0, CRPIX1=1.0, CUNIT1="Angstrom")  # 10-59 nm every 1 nm
    hdu.writeto(path)
    s = encoder(unit="nm").featurize(str(path))
    assert s.covered[10:60].all() and not s.covered[:10].any() and not s.covered[60:].any()
    np.testing.assert_allclose(s.intensity[10:60], np.linspace(1.0, 2.0, 50), rtol=1e-6)
    no_wcs = tmp_path / "plain.fits"
    fits.PrimaryHDU(np.ones(100)).writeto(no_wcs)
    assert encoder().featurize(str(no_wcs)).intensity.tolist() == [1.0] * 100


def test_fits_binary_table_with_wavelength_and_flux_columns(tmp_path):
    path = tmp_path / "table.fits"
    wave = np.arange(20.0, 80.0)
    table = fits.BinTableHDU.from_columns([fits.Column(name="WAVELENGTH", format="D", array=wave, unit="nm"),
                                           fits.Column(name="Flux", format="E", array=wave / 10)])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)
    s = encoder(unit="nm").featurize(str(path))
    np.testing.assert_allclose(s.intensity[20:80], wave / 10, rtol=1e-6)
    assert s.covered.sum() == 60
    empty = tmp_path / "empty.fits"
    fits.PrimaryHDU().writeto(empty)
    with pytest.raises(InputError, match="no 1-D spectrum HDU"):
        encoder().featurize(str(empty))


def test_npy_and_csv_files(tmp_path):
    np.save(tmp_path / "on_grid.npy", np.arange(100.0))
    np.save(tmp_path / "pairs.npy", np.stack([np.arange(0.0, 100.0, 2), np.arange(50.0)], 1))
    (tmp_path / "pairs.csv").write_text("wavelength,flux\n" + "".join(f"{x},{x / 2}\n" for x in range(0, 100, 2)))
    (tmp_path / "bad.csv").write_text("1,2\n3,x\n")
    assert encoder().featurize(str(tmp_path / "on_grid.npy")).intensity[7] == 7.0
    for name in ("pairs.npy", "pairs.csv"):
        s = encoder().featurize(str(tmp_path / name))
        np.testing.assert_allclose(s.intensity[:99], np.arange(99) / 2)
        assert s.covered[:99].all() and not s.covered[99]
    with pytest.raises(InputError, match="cannot read 'bad.csv' as numbers"):
        encoder().featurize(str(tmp_path / "bad.csv"))


def test_classification_head_targets_loss_decode_describe():
    head = ClassificationHead(4, targets={"kind": "class"}, classes=["a", "b", "c"])
    y = head.read_targets([{"class": "b"}, {"class": "z"}, {"class": None}, {"class": " a "}, {"class": "b"}])
    np.testing.assert_array_equal(y[:, 0], [1, np.nan, np.nan, 0, 1])
    raw = torch.tensor([[0.0, 9.0, 0.0], [9.0, 0.0, 0.0]])
    wrong = torch.tensor([[1.0], [2.0]])  # the second row's logits point at class a, not c
    assert head.loss(raw, wrong, torch.tensor([[True], [True]])).item() > 4  # the mean of 0 and 9
    assert head.loss(raw, wrong, torch.tensor([[True], [False]])).item() < 1e-3  # a missing target is ignored
    assert head.loss(raw, wrong, torch.tensor([[False], [False]])).item() == 0.0
    probs = head.decode(head(Fused(torch.randn(5, 4), {}, {})))
    assert probs.shape == (5, 3) and torch.allclose(probs.sum(1), torch.ones(5))
    assert head.describe(np.array([0.1, 0.7, 0.2]), {}) == {"kind": "b", "kind_probability": pytest.approx(0.7),
                                                            "kind_entropy": pytest.approx(0.8018, abs=1e-4)}
    assert head.outputs == ["kind", "kind_probability", "kind_entropy"]


def test_accuracy_and_macro_f1_by_hand():
    y = np.array([[0.0], [0.0], [1.0], [1.0], [2.0], [np.nan]])
    predicted = np.array([0, 1, 1, 1, 0, 2])  # the last row has no target and is not scored
    assert score("accuracy", y, predicted) == pytest.approx(3 / 5)
    # F1 per class: 0: P 1/2, R 1/2 -> 0.5; 1: P 2/3, R 1 -> 0.8; 2: nothing right -> 0
    assert score("macro_f1", y, predicted) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    probabilities = np.eye(3)[predicted] * 0.6 + 0.1  # the same classes, as probabilities
    assert score("macro_f1", y, probabilities) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_stratified_split_keeps_the_class_mix_and_rare_classes_in_training():
    labels = ["a"] * 50 + ["b"] * 20 + ["c"] * 2 + ["d"]
    train, val, test = stratified_split(labels, (0.6, 0.2, 0.2), seed=0)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(len(labels)))
    count = lambda part, c: sum(labels[i] == c for i in part)
    assert [count(test, c) for c in "abcd"] == [10, 4, 0, 0] and [count(val, c) for c in "abcd"] == [10, 4, 0, 0]
    assert not np.array_equal(np.sort(test), np.sort(stratified_split(labels, (0.6, 0.2, 0.2), seed=1)[2]))


def band(centre: float, rng) -> list[float]:
    """A synthetic reflectance spectrum on the asteroid grid: a slope with one absorption band."""
    x = np.linspace(450, 2450, 401)
    return (1 + 0.1 * (x - 450) / 2000 - 0.3 * np.exp(-((x - centre) / 120) ** 2)
            + rng.normal(0, 0.01, len(x))).tolist()


def test_tiny_classification_task_learns_known_classes(tmp_path):
    rng = np.random.default_rng(0)
    centres = {"one": 900.0, "two": 1500.0, "three": 2100.0}
    rows = [{"spectrum": band(c, rng), "taxonomy_class": k} for _ in range(16) for k, c in centres.items()]
    overrides = {"head.classes": list(centres), "head.hidden": 16, "fusion.dim": 16, "fusion.latents": 2,
                 "encoders.spectrum-vnir.channels": 8, "encoders.spectrum-vnir.dim": 16, "train.epochs": 25,
                 "train.lr": 3e-3, "train.batch_size": 8, "train.patience": 25}
    model, metrics = zoo.train("asteroid-taxonomy", rows, out=tmp_path / "m", progress=False, overrides=overrides)
    assert set(metrics["test"]) == {"accuracy", "macro_f1"}
    fresh = [{"spectrum": {"axis": np.linspace(400, 2500, 300), "intensity": np.interp(
        np.linspace(400, 2500, 300), np.linspace(450, 2450, 401), band(c, rng))}} for c in centres.values()]
    assert [p["taxonomy"] for p in zoo.load(tmp_path / "m").predict(fresh)] == list(centres)
    # A table's cells: JSON text, a .npy path, a spectrum with a NaN (that row alone fails).
    np.save(tmp_path / "two.npy", band(centres["two"], rng))
    cells = [json.dumps(band(centres["one"], rng)), str(tmp_path / "two.npy"), json.dumps([1.0] * 400 + [None])]
    with open(tmp_path / "in.csv", "w", newline="") as f:
        csv.writer(f).writerows([["spectrum"]] + [[c] for c in cells])
    summary = zoo.predict_table(model, tmp_path / "in.csv", tmp_path / "out.csv", progress=False)
    out = read_rows(tmp_path / "out.csv")
    assert [r["taxonomy"] for r in out[:2]] == ["one", "two"] and 0 < float(out[0]["taxonomy_probability"]) <= 1
    assert summary.n_failed == 1 and out[2]["error"].startswith("spectrum: column 'spectrum': ")


@pytest.mark.parametrize("dataset, file, n, column", [
    ("asteroid_reflectance_taxonomy", "asteroid_spectra.npz", 591, "taxonomy_class"),
    ("meteorite_mineral_reflectance_composition", "mineral_spectra.npz", 674, "Fs (OPX)"),
])
def test_real_spectra_read_and_featurize(dataset, file, n, column):
    path = SHARED_DATA / dataset / file
    if not path.is_file():
        pytest.skip(f"real data not here: {path}")
    rows = READERS["spectra-npz"](path)
    assert len(rows) == n and column in rows[0] and len(rows[0]["spectrum"]["intensity"]) == 401
    task = "asteroid-taxonomy" if "asteroid" in dataset else "mineral-composition"
    model = zoo.ZooModel(zoo.info(task))
    targets = model.targets(rows[:20])
    assert np.isfinite(targets).any(1).all()
    s = model.encoders["spectrum-vnir"].featurize(rows[0]["spectrum"])
    assert s.covered.all() and np.allclose(s.intensity, rows[0]["spectrum"]["intensity"])


def test_bundled_models_predict_from_a_spectrum():
    rng = np.random.default_rng(1)
    [taxonomy] = zoo.load("asteroid-taxonomy").predict([{"spectrum": band(950.0, rng)}])
    assert taxonomy["taxonomy"] in zoo.info("asteroid-taxonomy").head.params["classes"]
    [composition] = zoo.load("mineral-composition").predict([{"spectrum": (np.array(band(1050.0, rng)) / 3).tolist()}])
    targets = zoo.info("mineral-composition").head.targets
    assert all(np.isfinite(composition[t]) and composition[f"{t}_sigma"] > 0 for t in targets) and len(targets) == 15
