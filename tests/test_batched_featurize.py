"""Featurizing many rows at once (``featurize_many``, ``featurize_rows``) gives what one row at a time gives, and
a bad cell stays that row's error."""
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

import zoo
from encoders import InputError
from encoders.crystal import CHGNET_BATCH, CrystalCHGNet, chgnet_backbone
from zoo.model import ZooModel
from tests.conftest import ROOT

CIFS = sorted(str(p) for p in (ROOT / "examples" / "crystals").glob("*.cif"))
SMALL = {"fusion.dim": 16, "fusion.heads": 2, "fusion.latents": 2, "head.hidden": 16,
         "encoders.crystal-chgnet.dim": 16, "encoders.composition.dim": 16, "encoders.composition.heads": 2}


def perovskites(n: int) -> list[dict]:
    """``n`` cubic ABO3 cells of a few compositions and lattice constants, as pymatgen dicts."""
    pairs = [("Sr", "Ti"), ("Ba", "Zr"), ("Ca", "Mn"), ("La", "Al"), ("K", "Nb")]
    return [Structure(Lattice.cubic(3.8 + 0.01 * i), [*pairs[i % len(pairs)], "O", "O", "O"],
                      [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]]).as_dict()
            for i in range(n)]


def test_chgnet_batched_features_equal_one_at_a_time():
    encoder = CrystalCHGNet(dim=16)
    raws = CIFS + perovskites(CHGNET_BATCH + 4)  # more than one CHGNet batch
    batched = encoder.featurize_many(raws)
    for raw, many in zip(raws, batched):
        one = encoder.featurize(raw)
        assert np.array_equal(one.z, many.z)
        assert np.abs(one.features - many.features).max() <= 1e-5


def test_a_bad_structure_is_its_rows_error_and_the_rest_of_the_chunk_is_featurized(monkeypatch):
    encoder = CrystalCHGNet(dim=16)
    isolated = Structure(Lattice.cubic(12), ["Na"], [[0, 0, 0]]).as_dict()  # refused when its graph is built
    rows = perovskites(6)
    alone = [encoder.featurize(r) for r in rows]
    out = encoder.featurize_many(rows[:3] + [isolated, "not a structure"] + rows[3:])
    assert "isolated atom" in str(out[3]) and isinstance(out[4], InputError)
    kept = out[:3] + out[5:]
    assert all(np.abs(a.features - b.features).max() <= 1e-5 for a, b in zip(alone, kept))
    # A graph that fails CHGNet's forward fails its whole batch: the batch is rerun one graph at a time.
    model, forward = chgnet_backbone("0.3.0"), chgnet_backbone("0.3.0").forward
    def fails_on_barium(graphs, **kwargs):
        if any(56 in g.atomic_number.tolist() for g in graphs):
            raise RuntimeError("index out of range\nmore")
        return forward(graphs, **kwargs)
    monkeypatch.setattr(model, "forward", fails_on_barium)
    out = encoder.featurize_many(rows)
    assert [isinstance(o, InputError) for o in out] == [False, True, False, False, False, False]
    assert str(out[1]) == "crystal: CHGNet cannot take this structure: index out of range"
    assert np.abs(out[0].features - alone[0].features).max() <= 1e-5


def test_featurize_rows_keeps_the_row_semantics_of_featurize():
    model = ZooModel(zoo.info("materials-property", overrides=SMALL))
    rows = [{"structure": CIFS[0]}, {"structure": ""}, {"structure": "missing.cif"}, {"structure": CIFS[1]}]
    done = model.featurize_rows(rows)
    for row, (features, err) in zip(rows, done):
        try:
            one = model.featurize(row)
        except InputError as one_err:
            assert features is None and str(err) == str(one_err)
        else:
            assert err is None and features.keys() == one.keys()
    assert str(done[1][1]) == "row: every input is empty ('structure')"
    assert str(done[2][1]).startswith("crystal: column 'structure': no such file")


def test_workers_give_the_same_predictions_as_the_main_process():
    model = ZooModel(zoo.info("materials-property", overrides=SMALL))
    model.head.fit(np.array([[0.0], [1.0]]))
    rows = [{"structure": s} for s in perovskites(70) + ["not a structure"] + CIFS]  # two chunks of rows
    here, workers = model.predict(rows), model.predict(rows, workers=2)
    assert "error" in here[70] and here[70] == workers[70]
    assert all(a["e_form"] == pytest.approx(b["e_form"], abs=1e-5) for a, b in zip(here, workers) if "e_form" in a)
