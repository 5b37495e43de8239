"""msms-to-molecule: the MassBank reader, the compound split, retrieval metrics with several spectra per compound,
the precursor and mass encoders, the nearest-spectrum baseline, and a train/load/predict round trip.
Spectra here are generated (peaks derived from each molecule's mass), never the shared data."""
import csv
import gzip
import json

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import Descriptors

import zoo
from encoders import InputError
from encoders.mass import MoleculeMassEncoder, PrecursorEncoder
from encoders.molecule import MoleculeDMPNN
from encoders.spectrum import SpectrumCNN
from fusion.common import Fused
from tasks import READERS, SPLITS, score
from tasks.baselines import BASELINES
from tasks.heads import ContrastiveHead
from tasks.metrics import groups_of, ranks
from zoo.cli import main

MOLECULES = {"caffeine": "Cn1cnc2c1c(=O)n(C)c(=O)n2C", "paracetamol": "CC(=O)Nc1ccc(O)cc1",
             "ibuprofen": "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
             "nicotine": "CN1CCCC1c1cccnc1", "benzoic acid": "OC(=O)c1ccccc1", "phenol": "Oc1ccccc1",
             "toluene": "Cc1ccccc1", "glycerol": "OCC(O)CO", "ethyl acetate": "CCOC(C)=O"}

TINY = {"encoders.molecule-dmpnn.hidden": 32, "encoders.spectrum-msms.channels": 8, "encoders.spectrum-msms.dim": 32,
        "encoders.precursor.dim": 32, "encoders.precursor.hidden": 32, "encoders.molecule-mass.dim": 32,
        "encoders.molecule-mass.hidden": 32, "fusion.dim": 32, "head.hidden": 32, "head.embedding": 32,
        "train.batch_size": 16, "train.epochs": 2, "train.warmup_epochs": 0}


def _spectrum_rows(copies: int = 3) -> list[dict]:
    """Made-up spectra: the [M+H]+ ion and fragments at fixed fractions of it, one per 'collision energy'."""
    rows = []
    for name, smiles in MOLECULES.items():
        mz = Descriptors.ExactMolWt(Chem.MolFromSmiles(smiles)) + 1.007276
        for energy in range(copies):
            peaks = [[round(mz * f, 4), 999.0 / (1 + k + energy)] for k, f in enumerate((1.0, 0.71, 0.52, 0.38))]
            rows.append({"name": name, "spectrum": json.dumps(peaks), "smiles": smiles,
                         "precursor": json.dumps({"mz": round(mz, 4), "adduct": "[M+H]+",
                                                  "collision_energy": f"{15 * (energy + 1)} % (nominal)"}),
                         "inchikey_block": Chem.MolToInchiKey(Chem.MolFromSmiles(smiles)).split("-")[0]})
    return rows


def test_group_split_never_shares_a_compound():
    rng = np.random.default_rng(0)
    keys = [f"C{g}" for g in range(60) for _ in range(rng.integers(1, 15))] + [None, ""]  # no key: its own group
    for seed in range(5):
        parts = SPLITS["group"](keys, (0.8, 0.1, 0.1), seed)
        assert sorted(np.concatenate(parts).tolist()) == list(range(len(keys)))
        sets = [{keys[i] for i in part if keys[i]} for part in parts]
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
        n_groups = [len({keys[i] or ("row", i) for i in part}) for part in parts]
        assert n_groups == [50, 6, 6]  # fractions of the 62 groups (60 compounds, 2 keyless rows), not of rows
    assert not np.array_equal(SPLITS["group"](keys, (0.8, 0.1, 0.1), 0)[2], SPLITS["group"](keys, (0.8, 0.1, 0.1), 1)[2])


def test_ranks_count_each_compound_once():
    # Rows 0 and 1 are two spectra of compound A (one candidate, embedded twice), row 2 of B, row 3 of C.
    a, b, c = np.eye(3)
    candidates = np.stack([a, a, b, c])
    queries = np.array([[1.0, 0, 0], [0.6, 0.8, 0], [0.8, 0.6, 0], [0, 0, 1.0]])
    pairs = np.stack([queries, candidates], 1)
    groups = np.array([[1.0], [1.0], [2.0], [3.0]])
    # q1: B beats its A; q2: A beats its B, and A counts once although two rows hold it -> ranks 1, 2, 2, 1
    assert ranks(pairs, groups=groups_of(groups)).tolist() == [1, 2, 2, 1]
    assert ranks(pairs).tolist() == [1, 2, 3, 1]  # as plain pairs, A would be counted twice for q2
    assert score("hits@1", groups, pairs) == pytest.approx(0.5)
    assert score("mrr", groups, pairs) == pytest.approx((1 + 0.5 + 0.5 + 1) / 4)
    assert score("hits@10", groups, pairs) == 1.0
    # reverse: A (row 1) ranks the queries, leaving out q0 (its other spectrum): q2 (0.8) beats q1 (0.6)
    assert ranks(pairs, reverse=True, groups=groups_of(groups)).tolist() == [1, 2, 2, 1]
    # no groups (0): every row its own, as for text-molecule pairs
    assert score("mrr", np.zeros((4, 1)), pairs) == pytest.approx(np.mean(1 / ranks(pairs)))


def test_contrastive_loss_takes_no_negative_from_the_same_compound():
    head = ContrastiveHead(4, query="spectrum", candidate="smiles", targets={"compound": "inchikey_block"},
                           temperature=0.01)
    same = torch.nn.functional.normalize(torch.ones(2, 2, 4), dim=-1)  # two spectra, one molecule, perfect match
    assert head.read_targets([{"inchikey_block": "A"}, {"inchikey_block": "A"}, {}]).ravel().tolist()[:2] == [1, 1]
    grouped = head.loss(same, torch.ones(2, 1), torch.ones(2, 1, dtype=torch.bool))
    paired = head.loss(same, torch.zeros(2, 1), torch.ones(2, 1, dtype=torch.bool))
    assert grouped.item() == pytest.approx(0.0, abs=1e-6) and paired.item() == pytest.approx(np.log(2), abs=1e-4)


def test_contrastive_head_fuses_several_query_inputs():
    head = ContrastiveHead(8, query=["spectrum", "precursor"], candidate=["smiles", "mass"], hidden=16, embedding=4)
    x = {n: torch.randn(3, t, 8) for n, t in (("spectrum", 5), ("precursor", 1), ("smiles", 7), ("mass", 1))}
    masks = {n: torch.ones(3, v.shape[1], dtype=torch.bool) for n, v in x.items()}
    masks["precursor"][0] = False  # a row without a precursor still embeds (its flag says so)
    out = head(Fused(pooled=torch.zeros(3, 8), tokens=x, masks=masks))
    assert out.shape == (3, 2, 4) and torch.allclose(out.norm(dim=-1), torch.ones(3, 2))
    assert (head.query, head.candidate) == ("spectrum", "smiles")  # the first input names each side


def test_precursor_and_mass_encoders():
    precursor = PrecursorEncoder(dim=8, frequencies=4, hidden=8)
    mass = MoleculeMassEncoder(dim=8, frequencies=4, hidden=8)
    got = precursor.featurize({"mz": "195.0877", "precursor_type": "[M+H]+", "collision_energy": "35 % (nominal)"})
    caffeine = mass.featurize(MOLECULES["caffeine"])
    assert got.numbers[0] == pytest.approx(caffeine.numbers[0], abs=1e-3)  # neutral mass from [M+H]+
    assert got.numbers[1:].tolist() == pytest.approx([0.35, 1.0])
    assert precursor.featurize("195.0877 [M+H]+").numbers[0] == pytest.approx(got.numbers[0])
    assert precursor.featurize(195.0877).adduct == 0  # m/z alone: ion type unknown
    for bad in ("abc", -5, "195.1 [M+X]+", {"adduct": "[M+H]+"}, "{not json"):
        with pytest.raises(InputError):
            precursor.featurize(bad)
    with pytest.raises(InputError):
        mass.featurize("C1CC")
    tokens = precursor(precursor.collate([got, None]))
    assert tokens.x.shape == (2, 1, 8) and tokens.mask.tolist() == [[True], [False]]


def test_reader_on_a_tiny_massbank_file(tmp_path):
    records = [
        {"accession": "MSBNK-X-1", "smiles": "CCO", "inchikey": "LFQSCWFLJHTTHZ-UHFFFAOYSA-N", "precursor_mz": "47.0491",
         "precursor_type": "[M+H]+", "ion_mode": "POSITIVE", "collision_energy": "30 % (nominal)",
         "peaks": [[29.0386, 1200.0, 250.0], [47.0491, 5000.0, 999.0]]},
        {"accession": "MSBNK-X-2", "smiles": "CCO", "inchikey": "LFQSCWFLJHTTHZ-UHFFFAOYSA-N", "precursor_mz": "45.0346",
         "precursor_type": "[M-H]-", "ion_mode": "NEGATIVE", "collision_energy": None, "peaks": []},
    ]
    path = tmp_path / "tiny.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records) + "\n")
    rows = READERS["massbank-jsonl"](path)
    assert len(rows) == 2 and rows[0]["inchikey_block"] == rows[1]["inchikey_block"] == "LFQSCWFLJHTTHZ"
    assert rows[0]["spectrum"] == {"axis": [29.0386, 47.0491], "intensity": [250.0, 999.0]}  # relative intensity
    assert rows[0]["precursor"] == {"mz": "47.0491", "adduct": "[M+H]+", "collision_energy": "30 % (nominal)"}
    assert rows[1]["spectrum"] is None and rows[1]["precursor_mz"] == pytest.approx(45.0346)
    model = zoo.ZooModel(zoo.info("msms-to-molecule", overrides=TINY))
    features = model.featurize(rows[0])
    assert features["precursor"].numbers[0] == pytest.approx(46.0419, abs=1e-3)
    assert features["spectrum"].intensity.max() == pytest.approx(1.0)  # base peak, square-rooted
    assert features["spectrum"].intensity[29] == pytest.approx(np.sqrt(250 / 999), abs=1e-6)


def test_nearest_spectrum_baseline_ranks_the_closest_analogue_first():
    spectra = SpectrumCNN(axis_min=0, axis_max=299, points=300, mode="peaks", normalize="max", segments=4)
    library = [  # (molecule, peaks): training compounds first, then the test compounds
        ("Oc1ccccc1", [[94.0, 999], [66.0, 400]]), ("CCCCCC", [[86.0, 300], [57.0, 999], [43.0, 700]]),
        ("OCC(O)CO", [[93.0, 999], [75.0, 500]]),
        ("Cc1ccc(O)cc1", [[108.0, 500], [94.0, 999], [66.0, 300]]), ("CCCCCCC", [[100.0, 200], [57.0, 999], [43.0, 800]]),
    ]
    features = [{"spectrum": spectra.featurize(peaks), "smiles": MoleculeDMPNN.featurize(smiles)}
                for smiles, peaks in library]
    targets = np.arange(1.0, 6.0)[:, None]
    pred = BASELINES["spectrum-nearest-analogue"](features, targets, np.arange(3), np.array([3, 4]))
    assert pred.shape == (2, 2, 2)  # (query, candidate) pairs over the two test compounds
    # p-cresol's spectrum is nearest phenol's, heptane's hexane's: each analogue ranks its own compound first
    assert ranks(pred, groups=targets[[3, 4], 0]).tolist() == [1, 1]
    assert score("hits@1", targets[[3, 4]], pred) == 1.0


def test_precursor_mass_baseline_matches_the_nearest_mass():
    precursor, mass = PrecursorEncoder(), MoleculeMassEncoder()
    names = ["caffeine", "paracetamol", "ibuprofen"]
    ions = [Descriptors.ExactMolWt(Chem.MolFromSmiles(MOLECULES[n])) + 1.007276 for n in names]
    features = [{"precursor": precursor.featurize(f"{mz:.4f} [M+H]+"), "mass": mass.featurize(MOLECULES[n])}
                for mz, n in zip(ions, names)]
    targets = np.array([[1.0], [2.0], [3.0]])
    pred = BASELINES["precursor-mass-match"](features, targets, np.array([0]), np.array([1, 2]))
    assert ranks(pred, groups=targets[[1, 2], 0]).tolist() == [1, 1]


def test_train_save_load_and_rank_candidates(tmp_path):
    rows = _spectrum_rows()
    _, metrics = zoo.train("msms-to-molecule", rows, out=tmp_path / "m", progress=False,
                           overrides={**TINY, "data.fractions": [0.6, 0.2, 0.2]})
    assert metrics["n_test"] == 6  # two test compounds of three spectra each, scored against 2 candidates
    assert set(metrics["test"]) >= {"mrr", "hits@1", "hits@10"} and metrics["test"]["hits@10"] == 1.0
    model = zoo.load(tmp_path / "m")
    assert model.spec.head.params["query"] == ["spectrum", "precursor"]
    queries, candidates = tmp_path / "q.csv", tmp_path / "c.csv"
    with open(queries, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["spectrum", "precursor"])
        writer.writerows([[r["spectrum"], r["precursor"]] for r in rows[::3]] + [["[[1, 2, 3]]", "not a number"]])
    with open(candidates, "w", newline="") as f:
        csv.writer(f).writerows([["name", "smiles"], *MOLECULES.items()])
    out = tmp_path / "ranked.csv"
    assert main(["predict", str(tmp_path / "m"), "--input", str(queries), "--output", str(out),
                 "--candidates", str(candidates), "--top", "3"]) == 0
    got = list(csv.DictReader(out.open()))
    matches = json.loads(got[0]["matches"])
    assert [m["rank"] for m in matches] == [1, 2, 3] and all(m["smiles"] in MOLECULES.values() for m in matches)
    assert float(got[0]["margin"]) == pytest.approx(matches[0]["score"] - matches[1]["score"], abs=2e-4)  # scores: 4 places
    assert got[-1]["error"] and not got[-1]["matches"]  # a bad row is reported, the others ranked


def test_example_files_rank_with_a_trained_model(tmp_path):
    """The README's example inputs are well-formed for the task (columns, JSON cells, SMILES)."""
    from pathlib import Path

    examples = Path(__file__).resolve().parent.parent / "examples"
    model = zoo.ZooModel(zoo.info("msms-to-molecule", overrides=TINY))
    for row in csv.DictReader((examples / "msms_spectra.csv").open()):
        assert set(model.featurize(row)) == {"spectrum", "precursor", "smiles", "mass"}
    for row in csv.DictReader((examples / "msms_candidates.csv").open()):
        assert model.featurize(row)["smiles"] is not None
