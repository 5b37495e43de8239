"""Entity-level scoring, IOB2 handling and the corpus readers, checked against hand-worked examples."""
import json

import numpy as np
import pytest
import torch

from tasks import score
from tasks.ner import entity_scores, iob2_viterbi, read_conll, read_standoff, spans, tag_names


def test_spans_follow_iob2_and_treat_a_stray_inside_tag_as_a_start():
    tags = ["B-protein", "I-protein", "O", "I-DNA", "I-DNA", "B-DNA", "B-protein", "I-DNA"]
    assert spans(tags) == {(0, 1, "protein"), (3, 4, "DNA"), (5, 5, "DNA"), (6, 6, "protein"), (7, 7, "DNA")}


def test_entity_scores_match_a_hand_worked_example():
    # gold: protein(0-1), DNA(3), protein(5)      predicted: protein(0-1) exact, DNA(3-4) too long, cell_type(5)
    gold = [["B-protein", "I-protein", "O", "B-DNA", "O", "B-protein"]]
    pred = [["B-protein", "I-protein", "O", "B-DNA", "I-DNA", "B-cell_type"]]
    s = entity_scores(gold, pred)
    # 1 true positive of 3 predicted and 3 gold: P = R = F1 = 1/3
    assert s["micro"] == pytest.approx({"precision": 1 / 3, "recall": 1 / 3, "f1": 1 / 3, "support": 3})
    assert s["protein"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert s["DNA"]["f1"] == 0.0 and s["cell_type"]["precision"] == 0.0


def test_decoding_keeps_to_valid_iob2_where_per_token_argmax_would_not():
    names = tag_names(["protein", "DNA"])  # O, B-protein, I-protein, B-DNA, I-DNA
    nan = float("nan")
    logits = torch.tensor([
        # B-protein, then I-DNA just above I-protein: argmax cuts the protein in two, IOB2 continues it
        [[0, 5, 0, 0, 0], [0, 0, 2.0, 0, 2.1], [3, 0, 0, 0, 0]],
        # a first I-protein is no entity start: B-protein, its runner-up, is; the padding stays NaN
        [[0, 2.0, 2.5, 0, 0], [nan] * 5, [nan] * 5],
    ])
    assert [[names[int(i)] for i in row] for row in logits.argmax(-1)][0] == ["B-protein", "I-DNA", "O"]
    decoded = iob2_viterbi(logits, names)
    assert decoded[0].tolist() == [names.index("B-protein"), names.index("I-protein"), names.index("O")]
    assert decoded[1, 0] == names.index("B-protein") and decoded[1, 1:].isnan().all()


def test_entity_f1_metric_scores_tag_ids_with_padding():
    names = tag_names(["protein", "DNA"])  # O, B-protein, I-protein, B-DNA, I-DNA
    ids = {t: i for i, t in enumerate(names)}
    gold = np.array([[ids["B-protein"], ids["I-protein"], ids["O"], np.nan],
                     [ids["B-DNA"], ids["O"], np.nan, np.nan]])
    pred = np.array([[ids["B-protein"], ids["I-protein"], ids["O"], np.nan],
                     [ids["O"], ids["O"], np.nan, np.nan]])
    assert score("entity_f1", gold, pred) == pytest.approx(2 * 1.0 * 0.5 / 1.5)  # P 1, R 1/2


def test_read_conll_skips_docstart_and_splits_sentences(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("-DOCSTART-\tO\n\nIL-2\tB-protein\ngene\tO\n\nT\tB-cell_type\ncells\tI-cell_type\n")
    assert read_conll(path) == [{"text": ["IL-2", "gene"], "tags": ["B-protein", "O"]},
                                {"text": ["T", "cells"], "tags": ["B-cell_type", "I-cell_type"]}]


def test_read_standoff_tags_words_from_character_offsets_and_splits_sentences(tmp_path):
    text = "IL-2 binds NF-kappa B. T cells respond.\nA second line"
    doc = {"doc_id": "1", "text": text, "entities": [
        {"type": "protein", "start": 0, "end": 4}, {"type": "protein", "start": 11, "end": 21},
        {"type": "cell_type", "start": 23, "end": 30}]}
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(doc) + "\n")
    rows = read_standoff(path)
    assert [r["text"] for r in rows] == [["IL", "-", "2", "binds", "NF", "-", "kappa", "B", "."],
                                         ["T", "cells", "respond", "."], ["A", "second", "line"]]
    assert rows[0]["tags"] == ["B-protein", "I-protein", "I-protein", "O", "B-protein", "I-protein", "I-protein",
                               "I-protein", "O"]
    assert rows[1]["tags"] == ["B-cell_type", "I-cell_type", "O", "O"]
