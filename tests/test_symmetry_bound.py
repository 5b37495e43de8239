"""A CIF whose symmetry expands it past the site limit is refused before pymatgen expands it (18 KB that make
100,000 sites took minutes per row), on every path that reads a structure: the crystal and the composition
encoders, and so ``materials-property`` and ``materials-bandgap``, whose good rows are still predicted."""
from __future__ import annotations

import functools
import math
import time
import warnings

import pytest
from pymatgen.io.cif import CifParser

import zoo
from encoders import InputError
from encoders.crystal import MAX_SITES, parse_structure
from tests.conftest import ROOT
from tests.test_bad_inputs import expanding_cif, within

NACL = str(ROOT / "examples" / "crystals" / "NaCl.cif")
NACL_FROM_SYMBOL = """data_NaCl
_symmetry_space_group_name_H-M 'F m -3 m'
_cell_length_a 5.64
_cell_length_b 5.64
_cell_length_c 5.64
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Na1 Na 0 0 0
Cl1 Cl 0.5 0.5 0.5
"""


@functools.cache
def bundled(task: str):
    return zoo.load(task)


def _timed_predict(model, rows):
    started = time.perf_counter()
    with within(10):  # the unbounded parse ran for minutes: fail fast instead
        out = model.predict(rows)
    return out, time.perf_counter() - started


@pytest.mark.parametrize("task, column, bad", [
    ("materials-property", "structure", "text"), ("materials-property", "structure", "file"),
    ("materials-bandgap", "composition", "file")])
def test_a_symmetry_expanded_cif_is_a_quick_row_error_beside_good_rows(task, column, bad, tmp_path):
    cif = expanding_cif()
    assert 15_000 < len(cif) < 20_000
    if bad == "file":
        (tmp_path / "expands.cif").write_text(cif)
        cif = str(tmp_path / "expands.cif")
    model = bundled(task)
    good = {column: NACL if task == "materials-property" else "NaCl"}
    model.predict([good])  # loads the backbones, so the time below is the rows'
    (bad_out,), seconds = _timed_predict(model, [{column: cif}])
    assert seconds < 2, f"{seconds:.1f} s for one row"
    assert "over 2,000 sites" in bad_out["error"] and "\n" not in bad_out["error"]
    out, _ = _timed_predict(model, [good, {column: cif}, good])
    target = next(iter(model.spec.head.targets))
    assert math.isfinite(out[0][target]) and math.isclose(out[0][target], out[2][target], rel_tol=1e-4)
    assert out[1] == bad_out


def test_the_count_before_expanding_is_the_count_pymatgen_makes():
    from encoders.crystal import _cif_sites

    for rows in (1, 3, 10):  # 192, 576 and 1,920 sites: accepted, and counted exactly
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            count = _cif_sites(CifParser.from_str(expanding_cif(rows)))
        assert count == len(parse_structure(expanding_cif(rows))) == 192 * rows <= MAX_SITES
    with pytest.raises(InputError, match=f"over {MAX_SITES:,} sites"):
        parse_structure(expanding_cif(11))  # 2,112


def test_high_symmetry_cifs_with_special_positions_still_parse():
    # Fm-3m from its symbol alone, atoms on special positions: 192 operations, 8 sites
    assert parse_structure(NACL_FROM_SYMBOL).composition.reduced_formula == "NaCl"
    assert len(parse_structure(NACL_FROM_SYMBOL)) == 8
    for path in sorted((ROOT / "examples" / "crystals").glob("*.cif")):
        assert len(parse_structure(str(path))) >= 1


def _p1_cif(ops: list[str], sites: list[tuple[float, float, float]]) -> str:
    listed = "".join(f"'{op}'\n" for op in ops)
    rows = "".join(f"Na{i} Na {x:.5f} {y:.5f} {z:.5f}\n" for i, (x, y, z) in enumerate(sites))
    return ("data_x\n_cell_length_a 20\n_cell_length_b 20\n_cell_length_c 20\n_cell_angle_alpha 90\n"
            "_cell_angle_beta 90\n_cell_angle_gamma 90\nloop_\n_symmetry_equiv_pos_as_xyz\n" + listed +
            "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n"
            "_atom_site_fract_z\n" + rows)


def test_a_flood_of_symmetry_operations_is_refused_before_they_are_parsed():
    # 30,000 translations by 1e-5: images that a coarse count would merge, and pymatgen took 12 s to parse
    cif = _p1_cif([f"x+{i}/100000,y,z" for i in range(30_000)], [(0, 0, 0)])
    with within(2), pytest.raises(InputError, match="30,000 symmetry operations"):
        parse_structure(cif)


def test_atoms_closer_than_the_count_grid_are_still_counted_apart():
    # 3,000 atom rows 2e-4 apart (fractional): pymatgen keeps each one, so the count must too
    sites = [(0.1 + (i % 15) * 2e-4, 0.1 + (i // 15 % 15) * 2e-4, 0.1 + (i // 225) * 2e-4) for i in range(3000)]
    with within(2), pytest.raises(InputError, match=f"over {MAX_SITES:,} sites"):
        parse_structure(_p1_cif(["x,y,z"], sites))
