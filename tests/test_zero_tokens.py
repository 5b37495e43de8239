"""Texts the tokenizer reduces to nothing (control, zero-width, combining characters, U+FFFD from a non-UTF-8
byte) are per-row errors out of ``predict``: the other rows of the batch are tagged, and a dropped character
inside a text leaves the entities' offsets on the words they tag."""
from __future__ import annotations

import functools

import pytest

import zoo

DROPPED = ["\u200b\u200c", "\u0301\u0302", "\ufffd", "\x00\x01", "\ufeff \u00ad", "\x07\n\u200b"]
CLEAN = "Activation of NF-kappa B by IL-2 requires the CD28 receptor in human T cells ."


@functools.cache
def bundled(task: str):
    return zoo.load(task)


@pytest.mark.parametrize("task", ["bio-ner", "bio-ner-chem"])
def test_a_text_with_no_token_is_a_row_error_and_the_batch_is_kept(task):
    rows = [{"text": CLEAN}] + [{"text": t} for t in DROPPED] + [{"text": "aspirin and ibuprofen"}]
    out = bundled(task).predict(rows)
    assert "entities" in out[0] and "entities" in out[-1]
    for result in out[1:-1]:
        assert result["error"].startswith("text: ") and "no token is left" in result["error"], result
        assert "\n" not in result["error"]


def test_dropped_characters_inside_a_text_keep_entities_on_their_words():
    model = bundled("bio-ner")
    noisy = CLEAN.replace(" ", " \u200b ").replace("IL-2", "IL\u0301-2")  # zero-width words, a combining mark
    clean, dirty = model.predict([{"text": CLEAN}, {"text": noisy}])
    assert clean["entities"] and "warning" not in dirty
    assert ([(e["type"], CLEAN[e["start"]:e["end"]]) for e in clean["entities"]]
            == [(e["type"], noisy[e["start"]:e["end"]].replace(" \u200b ", " ").replace("\u0301", ""))
                for e in dirty["entities"]])
