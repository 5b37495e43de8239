"""The text encoder (offline MiniLM), transfer strategies, bio-ner end to end, and molecule-text retrieval."""
import json
import os

import numpy as np
import pytest
import torch

import zoo
from encoders import InputError
from encoders.text import TextBERT, resolve_model, split_words
from tasks import score
from tasks.metrics import ranks
from zoo.cli import main

SENTENCES = [  # generated: protein names in fixed frames, so a model can learn them in a few steps
    (f"{p} activates the {g} gene in T cells .", p, g) for p in ("IL-2", "TNF-alpha", "NF-kappa B", "p53", "STAT3")
    for g in ("c-fos", "GATA-1", "HIV-1 LTR")
]


def _ner_rows():
    rows = []
    for sentence, protein, gene in SENTENCES:
        words = sentence.split()
        tags = ["O"] * len(words)
        n_p, n_g = len(protein.split()), len(gene.split())
        tags[:n_p] = ["B-protein"] + ["I-protein"] * (n_p - 1)
        g0 = n_p + 2
        tags[g0 : g0 + n_g + 1] = ["B-DNA"] + ["I-DNA"] * n_g
        tags[-3:-1] = ["B-cell_type", "I-cell_type"]
        rows.append({"text": words, "tags": tags})
    return rows


NER_TINY = {"fusion.dim": 32, "train.batch_size": 8, "train.epochs": 3, "data.fractions": [0.7, 0.3, 0.0],
            "train.ensemble": 1}  # one model: the registry's two would double every test's training


@pytest.fixture(scope="module")
def encoder():
    return TextBERT(tokens="words", max_length=16)


def test_the_offline_default_resolves_to_the_wheel_and_the_hub_is_not_needed(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert os.path.isdir(resolve_model("all-MiniLM-L6-v2"))
    assert TextBERT(max_length=8).out_dim == 384


def test_featurize_keeps_character_offsets_and_marks_first_pieces(encoder):
    text = "IL-2 binds  NF-kappaB"
    f = encoder.featurize(text)
    words = split_words(text)
    assert [text[s:e] for s, e in f.offsets] == [w for w, _, _ in words] == ["IL", "-", "2", "binds", "NF", "-",
                                                                              "kappaB"]
    assert f.first_piece[0] == 1 and np.all(np.diff(f.first_piece) > 0)  # after [CLS], one per word, in order
    assert f.dropped_words == 0


def test_long_text_is_truncated_with_a_count_and_bad_text_is_refused(encoder):
    f = encoder.featurize(" ".join(["protein"] * 40))
    assert len(f.ids) == 16 and f.dropped_words == 40 - len(f.first_piece) > 0
    for bad, why in (("   ", "empty"), ([], "empty"), (3.5, "expected a string")):
        with pytest.raises(InputError, match=why):
            encoder.featurize(bad)


def test_word_tokens_are_masked_per_row_and_a_missing_row_has_none(encoder):
    batch = encoder.collate([encoder.featurize(["T", "cells"]), None, encoder.featurize("IL-2 gene")])
    tokens = encoder(batch)
    assert tokens.x.shape == (3, 4, 384)
    assert tokens.mask.tolist() == [[True, True, False, False], [False] * 4, [True] * 4]
    assert torch.all(tokens.x[1] == 0)


def test_lora_trains_a_small_delta_and_saves_only_that(tmp_path):
    rows = _ner_rows()
    model, metrics = zoo.train("bio-ner", rows, out=tmp_path / "lora", progress=False, overrides=NER_TINY)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable < 0.05 * sum(p.numel() for p in model.parameters())
    size = (tmp_path / "lora" / "model.safetensors").stat().st_size
    assert size < 4e6  # the 22M-parameter backbone (90 MB) is rebuilt from the wheel, not saved
    loaded = zoo.load(tmp_path / "lora")
    query = [{"text": "IL-2 activates the c-fos gene in T cells."}]
    assert loaded.predict(query) == model.predict(query)
    full, _ = zoo.train("bio-ner", rows, out=tmp_path / "full", progress=False,
                        overrides={**NER_TINY, "train.epochs": 1, "inputs.text.transfer": "train"})
    assert (tmp_path / "full" / "model.safetensors").stat().st_size > 10 * size


def test_bio_ner_predicts_spans_with_offsets_warnings_and_errors(tmp_path):
    rows = _ner_rows()
    zoo.train("bio-ner", rows, out=tmp_path / "m", progress=False,
              overrides={**NER_TINY, "train.epochs": 8, "inputs.text.transfer": "train", "inputs.text.lr": 1e-4,
                         "encoders.text-minilm-words.max_length": 24})
    text = "STAT3 activates the GATA-1 gene in T cells ."
    inputs = tmp_path / "abstracts.jsonl"
    inputs.write_text("\n".join(json.dumps(r) for r in [
        {"id": 1, "text": text}, {"id": 2, "text": ""}, {"id": 3, "text": " ".join([text] * 6)}]) + "\n")
    out = tmp_path / "entities.jsonl"
    assert main(["predict", str(tmp_path / "m"), "--input", str(inputs), "--output", str(out)]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    entities = json.loads(got[0]["entities"])
    words = split_words(text)
    assert entities  # learned from 10 training sentences
    for e in entities:  # offsets index the original text, from the entity's first word to its last
        assert (e["start"], e["end"]) == (words[e["first_word"]][1], words[e["last_word"]][2])
        assert 0 < e["confidence"] <= 1  # its least probable word's tag
    assert got[0]["error"] is None and got[0]["warning"] is None
    assert got[1]["entities"] is None and "empty" in got[1]["error"]
    assert "past the maximum length" in got[2]["warning"] and got[2]["error"] is None


def test_mrr_and_hits_count_the_rank_of_each_own_partner():
    # query i's own candidate is candidate i; unit vectors at angles so the ranks are 1, 2, 1
    c = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    q = np.array([[1.0, 0.0], [0.8, 0.6], [-1.0, 0.0]])
    pairs = np.stack([q, c], 1)
    assert ranks(pairs).tolist() == [1, 2, 1]
    assert score("mrr", np.zeros((3, 1)), pairs) == pytest.approx((1 + 0.5 + 1) / 3)
    assert score("hits@1", np.zeros((3, 1)), pairs) == pytest.approx(2 / 3)


def test_retrieval_trains_and_ranks_a_candidate_table(tmp_path):
    molecules = {"ethanol": "CCO", "benzene": "c1ccccc1", "acetic acid": "CC(=O)O", "phenol": "Oc1ccccc1",
                 "pyridine": "c1ccncc1", "cyclohexane": "C1CCCCC1", "toluene": "Cc1ccccc1", "glycerol": "OCC(O)CO"}
    rows = [{"description": f"The molecule is {name}.", "SMILES": smi} for name, smi in molecules.items()] * 4
    zoo.train("molecule-text-retrieval", rows, out=tmp_path / "m", progress=False,
              overrides={"fusion.dim": 32, "head.embedding": 32, "encoders.molecule-dmpnn.hidden": 32,
                         "train.epochs": 2, "train.batch_size": 8})
    queries = tmp_path / "q.csv"
    queries.write_text("description\nThe molecule is ethanol.\n\"\"\n")
    candidates = tmp_path / "c.csv"
    candidates.write_text("name,SMILES\n" + "".join(f"{n},{s}\n" for n, s in molecules.items()) + "bad,C1CC\n")
    out = tmp_path / "ranked.csv"
    assert main(["predict", str(tmp_path / "m"), "--input", str(queries), "--output", str(out),
                 "--candidates", str(candidates), "--top", "3"]) == 0
    import csv
    got = list(csv.DictReader(out.open()))
    matches = json.loads(got[0]["matches"])
    assert [m["rank"] for m in matches] == [1, 2, 3] and matches[0]["score"] >= matches[-1]["score"]
    assert all(m["SMILES"] in molecules.values() for m in matches)  # the unparseable candidate is never ranked
    assert got[1]["error"] and not got[1]["matches"]
    assert main(["predict", str(tmp_path / "m"), "--input", str(queries)]) == 2  # no candidates: a clear error
