"""The bad-input matrix: every configured encoder of the registry against empty, None, wrong types, huge inputs,
NaN and inf, text that is not valid UTF-8 or that the tokenizer reduces to nothing, structures whose symmetry
expands them past the site limit, and file cells that leave the data root, loop, are truncated or are too big.
Each case ends in an ``InputError`` naming the modality and a one-line reason, or in a documented clamp with
finite features and at least one token, within a time bound; none crashes or hangs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import functools
import shutil
import signal
import struct
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pymatgen.core import Lattice, Structure

from encoders import ENCODERS, InputError, build_encoder
from tests.conftest import ROOT
from zoo.registry import BUILTIN_REGISTRY

SECONDS = 10  # per case; every refusal here takes well under one

# The modality each encoder type names in its errors; an encoder type not listed gets the generic cases.
MODALITY = {"molecule-dmpnn": "molecule", "composition": "composition", "crystal-cgcnn": "crystal",
            "crystal-chgnet": "crystal", "text-bert": "text", "spectrum-cnn": "spectrum", "image-timm": "image"}
CONFIGURED = yaml.safe_load(BUILTIN_REGISTRY.read_text())["encoders"]


class Hung(BaseException):
    """Not an Exception, so no encoder's ``except Exception`` can turn a hang into an InputError."""


@contextlib.contextmanager
def within(seconds: float):
    """Fail a case that runs past ``seconds``. A hang inside C code, which no signal interrupts, ends the run
    with every thread's traceback instead (faulthandler), so CI never waits on it."""
    def late(*_):
        raise Hung(f"still running after {seconds} s")

    faulthandler.dump_traceback_later(6 * seconds, exit=True)
    previous = signal.signal(signal.SIGALRM, late)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.perf_counter()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()
    assert time.perf_counter() - started < seconds


def _nacl() -> Structure:
    return Structure.from_file(ROOT / "examples" / "crystals" / "NaCl.cif")


def _nacl_dict(matrix=None, coords=None) -> dict:
    d = _nacl().as_dict()
    if matrix is not None:
        d["lattice"]["matrix"] = matrix
    if coords is not None:
        d["sites"][0]["abc"] = coords
    return d


EXPANDING_CIF = """data_expands
_symmetry_space_group_name_H-M 'F m -3 m'
_cell_length_a 40.0
_cell_length_b 40.0
_cell_length_c 40.0
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
loop_
_symmetry_equiv_pos_as_xyz
{ops}loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
{sites}"""


@functools.cache
def expanding_cif(rows: int = 520, seed: int = 0) -> str:
    """An 18 KB CIF that its symmetry expands to about 100,000 sites: ``rows`` general positions under the 192
    operations of Fm-3m, listed in full (pymatgen took minutes to expand it)."""
    from pymatgen.symmetry.groups import SpaceGroup

    ops = "".join(f"'{op.as_xyz_str()}'\n" for op in SpaceGroup("Fm-3m").symmetry_ops)
    xyz = np.random.default_rng(seed).uniform(0.01, 0.24, (rows, 3))
    return EXPANDING_CIF.format(ops=ops, sites="".join(f"C{i} C {x:.4f} {y:.4f} {z:.4f}\n"
                                                       for i, (x, y, z) in enumerate(xyz)))


_FILES = tempfile.TemporaryDirectory(prefix="bad-inputs-")  # removed when the test run ends


def _in_file(text: str, name: str) -> str:
    """``text`` written to a file named ``name``; its path (a structure column may name a file)."""
    path = Path(_FILES.name) / name
    path.write_text(text)
    return str(path)


POSCAR_100K = "declares 100,000 atoms\n1.0\n40 0 0\n0 40 0\n0 0 40\nC\n100000\nDirect\n0 0 0 C\n"


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds none: decoding it would need gigabytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


# (case, raw value or a function of the encoder, expected: "error", "clamp" (finite features) or "either")
GENERIC = [
    ("none", None, "error"), ("empty", "", "error"), ("blank", " \t\n", "error"), ("int", 12345, "error"),
    ("nan", float("nan"), "error"), ("inf", float("inf"), "error"), ("bytes", b"\xff\xfe\x00", "error"),
    ("not-utf8", "\udcff\udcfe", "error"),  # bytes read with surrogateescape
    ("object", object(), "error"), ("nested-dict", {"a": {"b": 1}}, "error"),
]
CASES = {
    "molecule": [
        ("huge-100k-atoms", "C" * 100_000, "error"), ("over-atom-limit", "C" * 1001, "error"),
        ("deep-branches", "C(" * 3000 + "C" + ")" * 3000, "error"), ("non-ascii", "CCÖ", "error"),
        ("nul", "C\x00C", "error"), ("unclosed-ring", "C1CC", "error"), ("valence", "CC(C)(C)(C)C", "error"),
    ],
    "composition": [
        ("huge", "H2O" * 1000, "error"), ("overflow", "H1e400", "error"), ("negative", "H-1", "error"),
        ("zero", "H0", "error"), ("unknown-element", "Xx2", "error"), ("nan", "HNaN", "either"),
    ],
    "crystal": [
        ("huge-2662-sites", lambda enc: (_nacl() * 11).as_dict(), "error"),
        ("huge-text", "data_x\n_cell_length_a 3\n" + "#" * (1 << 20), "error"),
        ("nan-lattice", _nacl_dict(matrix=[[float("nan"), 0, 0], [0, 5.6, 0], [0, 0, 5.6]]), "error"),
        ("inf-coords", _nacl_dict(coords=[float("inf"), 0, 0]), "error"),
        ("collapsed-cell", Structure(Lattice.cubic(0.01), ["Na"], [[0, 0, 0]]).as_dict(), "error"),
        ("flat-cell", _nacl_dict(matrix=[[5.6, 0, 0], [11.2, 0, 0], [0, 0, 5.6]]), "error"),
        ("thin-cell", Structure(Lattice([[100, 0, 0], [0, 100, 0], [0, 0, 0.01]]), ["Na"], [[0, 0, 0]]).as_dict(),
         "error"),
        ("bad-cif-text", "data_x\n_cell_length_a 3\nloop_\n", "error"),
        # refused before pymatgen expands them (it took minutes on the 100,000 sites)
        ("symmetry-100k-sites", lambda enc: expanding_cif(), "error"),
        ("symmetry-100k-sites-file", lambda enc: _in_file(expanding_cif(), "expands.cif"), "error"),
        ("symmetry-2112-sites", lambda enc: expanding_cif(rows=11), "error"),
        ("poscar-100k-atoms", POSCAR_100K, "error"),
        ("json-2662-sites", lambda enc: (_nacl() * 11).to_json(), "error"),
    ],
    "text": [
        ("huge", "word " * 300_000, "error"),
        ("long-is-cut", "word " * 100_000, "clamp"),  # 100,000 words: cut at max_length pieces, the rest counted
        ("mixed-list", ["a", 1], "error"), ("list-not-utf8", ["ok", "\udcff"], "error"), ("empty-list", [], "error"),
        # characters the tokenizer drops: no token is left (a non-UTF-8 CSV byte becomes U+FFFD)
        ("zero-width", "\u200b\u200c", "error"), ("combining-marks", "\u0301\u0302", "error"),
        ("replacement-chars", "\ufffd \ufffd", "error"), ("control-chars", "\x00\x01", "error"),
        ("format-chars", "\ufeff\u202e\u00ad", "error"), ("dropped-words-list", ["\x07", "\u200b"], "error"),
        ("zero-width-inside", "BRCA1\u200b binds \u0301 p53", "clamp"),
    ],
    "spectrum": [
        ("huge-no-axis", lambda enc: np.ones(10**6).tolist(), "error"),  # a length other than the grid's needs an axis
        ("huge-with-axis", lambda enc: {"axis": np.linspace(enc.grid[0], enc.grid[-1], 10**6),
                                        "intensity": np.ones(10**6)}, "clamp"),  # resampled onto the grid
        ("nan", lambda enc: [1.0] * (len(enc.grid) - 1) + [float("nan")], "error"),
        ("inf", lambda enc: [float("inf")] + [1.0] * (len(enc.grid) - 1), "error"),
        ("overflow", lambda enc: [1e308, 1e308] + [-1e308] * (len(enc.grid) - 2), "either"),
        ("deep-json", "[" * 100_000, "error"), ("bad-json", "[1, 2,", "error"), ("empty-list", [], "error"),
        ("wrong-length", [1.0, 2.0, 3.0], "error"),
    ],
    "image": [
        ("huge-20000px-array", np.broadcast_to(np.zeros(1, np.uint8), (20_000, 20_000)), "error"),
        ("nan-array", np.full((32, 32), np.nan), "error"), ("inf-array", np.full((32, 32), np.inf), "error"),
        ("wrong-shape", np.zeros((8, 8, 7)), "error"), ("empty-array", np.zeros((0, 0)), "error"),
        ("strings-array", np.array([["a"]]), "error"),
    ],
}
# It reads structures too, within the crystal encoder's bounds (a structure is a formula only from a file or dict).
CASES["composition"] += [CASES["crystal"][0], CASES["crystal"][1],
                         ("symmetry-100k-sites-file", lambda enc: _in_file(expanding_cif(), "expands.cif"), "error"),
                         ("poscar-100k-atoms-file", lambda enc: _in_file(POSCAR_100K, "POSCAR.vasp"), "error")]
# File cells (relative to the data root unless absolute); each modality's file suffixes.
SUFFIXES = {"crystal": [".cif"], "composition": [".cif"], "spectrum": [".npy", ".csv", ".fits"],
            "image": [".png", "-image.fits"]}
FILE_CASES = [("outside-root", "../outside/good{}"), ("absolute-outside", "{outside}/good{}"),
              ("symlink-escape", "escape{}"), ("symlink-loop", "loop{}"), ("truncated", "truncated{}"),
              ("garbage-not-utf8", "garbage{}"), ("directory", "folder{}"), ("over-size", "huge{}"),
              ("missing", "missing{}")]


def _params():
    out = []
    for name, config in CONFIGURED.items():
        modality = MODALITY.get(config["type"])
        for case, raw, expect in GENERIC + CASES.get(modality, []):
            out.append(pytest.param(name, raw, expect, id=f"{name}-{case}"))
    return out


def _file_params():
    out = []
    for name, config in CONFIGURED.items():
        for suffix in SUFFIXES.get(MODALITY.get(config["type"]), []):
            out.append(pytest.param(name, f"good{suffix}", "ok", id=f"{name}-good{suffix}"))
            out += [pytest.param(name, cell.format(suffix) if "{outside}" not in cell else cell.replace("{}", suffix),
                                 "error", id=f"{name}-{case}{suffix}") for case, cell in FILE_CASES]
    return out


_BUILT: dict = {}


def encoder(name: str):
    """The registry's configured encoder ``name``, built once for the module."""
    config = dict(CONFIGURED[name])
    if config["type"] not in ENCODERS:
        pytest.skip(f"encoder type {config['type']!r} is not registered")
    if name not in _BUILT:
        _BUILT[name] = build_encoder(config.pop("type"), **config)
    return _BUILT[name]


def check(name: str, raw, expect: str) -> None:
    enc = encoder(name)
    raw = raw(enc) if callable(raw) else raw
    modality = MODALITY.get(CONFIGURED[name]["type"])
    with within(SECONDS):
        try:
            features = enc.featurize(raw)
        except InputError as err:
            assert expect in ("error", "either"), f"refused a valid input: {err}"
            assert err.why and "\n" not in str(err), repr(str(err))
            assert modality is None or err.modality == modality, err
            return
    assert expect != "error", f"accepted a bad input: {type(features).__name__}"
    for field in dataclasses.fields(features):
        value = getattr(features, field.name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.isfinite(value).all(), f"non-finite {field.name}"
    with torch.no_grad():  # an accepted row reaches the fusion with a token (none would fail the whole batch)
        assert enc.eval()(enc.collate([features])).mask.any(), "accepted, but it gives the model no token"


@pytest.mark.parametrize("name, raw, expect", _params())
def test_bad_cell(name, raw, expect):
    check(name, raw, expect)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A data root with a good file of each kind and every way a file can be bad, and a folder outside it."""
    from astropy.io import fits
    from PIL import Image

    base = tmp_path_factory.mktemp("files")
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    axis = np.arange(0.0, 2501.0, 5.0)  # covers the registry's spectrum grids (Vis-NIR nm, MS/MS m/z)
    intensity = 1.0 + 0.1 * np.sin(axis / 100)
    good = {
        ".cif": (ROOT / "examples" / "crystals" / "NaCl.cif").read_bytes(),
        ".csv": ("wavelength,flux\n" + "".join(f"{a},{i}\n" for a, i in zip(axis, intensity))).encode(),
    }
    np.save(root / "good.npy", np.stack([axis, intensity], 1))
    fits.BinTableHDU.from_columns([fits.Column("wavelength", "D", array=axis),
                                   fits.Column("flux", "D", array=intensity)]).writeto(root / "good.fits")
    Image.fromarray((np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8)).save(root / "good.png")
    fits.PrimaryHDU(np.random.default_rng(0).random((48, 48))).writeto(root / "good-image.fits")
    for suffix, data in good.items():
        (root / f"good{suffix}").write_bytes(data)
    for suffix in (".cif", ".npy", ".csv", ".fits", ".png", "-image.fits"):
        shutil.copy(root / f"good{suffix}", outside / f"good{suffix}")
        data = (root / f"good{suffix}").read_bytes()
        # cut mid-record (a CSV cut at a line end is only a shorter spectrum, so cut after a comma)
        cut = data.rindex(b",", 0, len(data) // 2) + 1 if suffix == ".csv" else len(data) // 2
        (root / f"truncated{suffix}").write_bytes(data[:cut])
        (root / f"garbage{suffix}").write_bytes(bytes(range(128, 256)) * 40)
        (root / f"loop{suffix}").symlink_to(root / f"loop{suffix}")
        (root / f"escape{suffix}").symlink_to(outside / f"good{suffix}")
        (root / f"folder{suffix}").mkdir()
        with open(root / f"huge{suffix}", "wb") as f:  # sparse: no disk used
            f.truncate(300 << 20)
    (root / "truncated.png").write_bytes(_png_header(20_000, 20_000))  # the 20,000-pixel image: a header only
    return root, outside


@pytest.mark.parametrize("name, cell, expect", _file_params())
def test_bad_file_cell(name, cell, expect, data_root, monkeypatch):
    root, outside = data_root
    monkeypatch.setenv("ZOO_DATA_ROOT", str(root))
    check(name, cell.replace("{outside}", str(outside)), "clamp" if expect == "ok" else expect)


def test_without_a_data_root_paths_are_taken_as_given(data_root, monkeypatch):
    root, outside = data_root
    monkeypatch.delenv("ZOO_DATA_ROOT", raising=False)
    assert encoder("crystal-cgcnn").featurize(str(outside / "good.cif")).z.tolist() == [11, 17]
    with pytest.raises(InputError, match="cannot resolve"):
        encoder("crystal-cgcnn").featurize(str(root / "loop.cif"))


def test_a_cell_in_the_data_root_may_name_a_subfolder(data_root, monkeypatch):
    root, _ = data_root
    monkeypatch.setenv("ZOO_DATA_ROOT", str(root.parent))
    assert len(encoder("crystal-cgcnn").featurize("root/good.cif").z) == 2


def test_bounds_are_just_past_what_is_accepted():
    from encoders.crystal import MAX_SITES
    from encoders.molecule import MAX_ATOMS

    assert len(encoder("molecule-dmpnn").featurize("C" * MAX_ATOMS).atoms) == MAX_ATOMS
    with pytest.raises(InputError, match=f"over the limit of {MAX_ATOMS:,}"):
        encoder("molecule-dmpnn").featurize("C" * (MAX_ATOMS + 1))
    cells = _nacl() * (10, 10, 10)  # 2,000 sites, the limit
    assert len(encoder("crystal-cgcnn").featurize(cells).z) == len(cells) == MAX_SITES
    long = encoder("text-minilm-words").featurize("word " * 10_000)
    assert long.dropped_words == 10_000 - len(long.first_piece) > 0


# ---------------------------------------------------------------------------------------------------------------
# Table-level rows: what only a whole table can hold. `zoo predict` (the bundled molecule-solubility model) on a
# table whose rows span several of the reader's 1 MiB blocks must exit 0, predict every good row, and give the bad
# row a one-line reason in its error column (the last column: ``error`` or, where the input has one, a renamed one).

# This section's own imports, kept with it:
import json

import pyarrow.parquet as pq

from zoo.cli import main

PAD = "x" * 10_000  # a filler column: 300 rows span about three blocks
BAD_ROW = 250


def _oversize(rows):
    rows[BAD_ROW]["smiles"] = "C" * (3 << 20)  # a 3 MiB cell: longer than a block
    return "over the limit"


def _late_field(rows):
    for row in rows[200:]:  # a field first seen two blocks in
        row["source"] = "lab"
    rows[BAD_ROW]["smiles"] = "C1CC"
    return "cannot parse SMILES"


def _null_then_text(rows):
    for i, row in enumerate(rows):
        row["note"] = "checked" if i >= 200 else None
    rows[BAD_ROW]["smiles"] = "C1CC"
    return "cannot parse SMILES"


def _predicted_before(rows):
    for row in rows:  # the columns an earlier prediction wrote, and a column named like the next one's
        row.update(logS="-1.5", error="", logS_predicted="-1.4")
    rows[BAD_ROW].update(smiles="C1CC", logS="", error="molecule: an old reason")
    return "cannot parse SMILES"


TABLE_CASES = [(".csv", _oversize), (".jsonl", _oversize), (".jsonl", _late_field), (".jsonl", _null_then_text),
               (".csv", _predicted_before)]


@pytest.mark.parametrize("suffix, make", [pytest.param(s, m, id=f"{m.__name__[1:]}{s}") for s, m in TABLE_CASES])
def test_bad_table_row(suffix, make, tmp_path):
    good = ["CCO", "c1ccccc1", "CC(=O)Nc1ccc(O)cc1"]
    rows = [{"id": str(i), "smiles": good[i % 3], "pad": PAD} for i in range(300)]
    why = make(rows)
    table = tmp_path / f"in{suffix}"
    if suffix == ".jsonl":
        table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        table.write_text("".join(",".join(r) + "\n" for r in [rows[0], *(r.values() for r in rows)]))
    assert main(["predict", "molecule-solubility", "--input", str(table), "--output", str(tmp_path / "out.parquet"),
                 "--chunk-rows", "64"]) == 0
    out = pq.read_table(tmp_path / "out.parquet")
    inputs = set().union(*rows)
    added = [name for name in out.schema.names if name not in inputs]
    added = [added[0], added[-1]]  # the prediction (first after the inputs) and the error column (last)
    assert out.column("id").to_pylist() == [r["id"] for r in rows]
    for i, (logs, error) in enumerate(zip(*(out.column(c).to_pylist() for c in added))):
        if i == BAD_ROW:
            assert why in error and "\n" not in error and logs is None, error
        else:
            assert error is None and np.isfinite(logs), f"row {i}: {error}"
