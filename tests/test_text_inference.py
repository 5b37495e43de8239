"""Inference speed-ups that must not change predictions: LoRA merged into the backbone on load, and batches
cut by a token budget."""
import json
from pathlib import Path

import pytest
import torch

import zoo
from encoders import ZooError
from zoo.artifacts import save
from zoo.model import size_batches

ROOT = Path(__file__).resolve().parent.parent
JNLPBA_TEST = ROOT.parent / "shared" / "data" / "bioner_jnlpba" / "test.tsv"


@pytest.fixture(scope="module")
def models():
    return zoo.load("bio-ner"), zoo.load("bio-ner", merge=False)


@pytest.fixture(scope="module")
def rows():
    abstracts = [json.loads(line) for line in (ROOT / "examples" / "abstracts.jsonl").read_text().splitlines()]
    if not JNLPBA_TEST.is_file():  # the shared data folder is not part of the package
        return abstracts
    from tasks.ner import read_conll

    return abstracts + [{"text": s["text"]} for s in read_conll(JNLPBA_TEST)[:200]]


def test_size_batches_cap_rows_and_padded_tokens():
    assert size_batches([1, 2, 3, 4, 5], 2, None) == [(0, 2), (2, 4), (4, 5)]
    # 3 rows x 20 fit 100 tokens, a 4th of 40 would not; a row over the budget is a batch alone
    assert size_batches([10, 10, 20, 40, 100, 5000], 256, 100) == [(0, 3), (3, 4), (4, 5), (5, 6)]
    assert size_batches([], 4, 8) == []
    assert size_batches([1024] * 10, 4, 2048) == [(0, 4), (4, 8), (8, 10)]  # one size for all: no padding to cap


def test_merged_lora_gives_the_unmerged_logits(models, rows):
    merged, unmerged = models
    assert all(m.encoders["text-minilm-words"].merged for m in merged.members)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    batch = merged.collate([merged.featurize({"text": r["text"]}) for r in rows[:64]])
    with torch.no_grad():
        torch.testing.assert_close(merged(batch), unmerged(batch), atol=1e-4, rtol=0, equal_nan=True)


def test_token_budget_and_merge_leave_entities_unchanged(models, rows):
    merged, unmerged = models
    old = unmerged.predict(rows, batch_size=256, tokens=None)  # the path before: unmerged, 256-row batches
    assert merged.predict(rows) == old
    assert merged.predict(rows[:40], batch_size=7, tokens=64) == old[:40]  # small batches, rows over the budget alone


def test_a_merged_model_cannot_be_saved_but_an_unmerged_one_can(models, tmp_path):
    merged, unmerged = models
    with pytest.raises(ZooError, match="merge=False"):
        save(merged, tmp_path / "merged", {})
    save(unmerged, tmp_path / "unmerged", {})
    assert zoo.load(tmp_path / "unmerged").predict([{"text": "IL-2 activates NF-kappa B ."}]) == \
        merged.predict([{"text": "IL-2 activates NF-kappa B ."}])
