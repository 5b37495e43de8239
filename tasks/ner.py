"""Named-entity recognition: IOB2 tags, corpus readers and entity-level (exact span) precision/recall/F1.

Tags are numbered from the entity types: 0 is O, then B-type and I-type for each type in order. Scores are
conlleval's: an entity counts only when its type, first word and last word all match.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from encoders.text import split_words


def tag_names(types: list[str]) -> list[str]:
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def iob2_viterbi(logits: torch.Tensor, tags: list[str]) -> torch.Tensor:
    """The most probable tag sequence that is valid IOB2 (an I-type only after B-type or I-type, never first):
    per-token argmax breaks entities apart wherever one I- is unsure, and JNLPBA's long names are full of those.
    ``logits`` [B, T, K] are NaN where a row has no token; returns tag indices [B, T], NaN there too."""
    k = len(tags)
    allowed = torch.ones(k, k, dtype=torch.bool)  # [previous, next]
    for j, tag in enumerate(tags):
        if tag.startswith("I-"):
            allowed[:, j] = False
            allowed[tags.index("B-" + tag[2:]), j] = allowed[j, j] = True
    transition = torch.zeros(k, k).masked_fill(~allowed, float("-inf")).to(logits.device)
    present = ~logits[..., 0].isnan()
    log_p = torch.log_softmax(torch.nan_to_num(logits.float()), -1)
    first = torch.tensor([not t.startswith("I-") for t in tags], device=logits.device)
    score = log_p[:, 0].masked_fill(~first, float("-inf"))
    stay = torch.arange(k, device=logits.device).expand(len(logits), k)
    back = []
    for t in range(1, logits.shape[1]):  # a position without a token keeps the path as it was
        best, previous = (score.unsqueeze(2) + transition).max(1)
        here = present[:, t].unsqueeze(1)
        score = torch.where(here, best + log_p[:, t], score)
        back.append(torch.where(here, previous, stay))
    path = [score.argmax(1)]
    for previous in reversed(back):
        path.append(previous.gather(1, path[-1].unsqueeze(1)).squeeze(1))
    return torch.stack(path[::-1], 1).float().masked_fill(~present, float("nan"))


def spans(tags: list[str]) -> set[tuple[int, int, str]]:
    """IOB2 tags -> {(first word, last word, type)}; an I- that does not continue an entity starts one."""
    out, start, kind = set(), None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, t = tag.partition("-")
        if start is not None and (prefix != "I" or t != kind):
            out.add((start, i - 1, kind))
            start = kind = None
        if prefix == "B" or (prefix == "I" and start is None):
            start, kind = i, t
    return out


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, dict[str, float]]:
    """Per entity type and ``micro``: precision, recall, f1 and the gold count (``support``)."""
    counts: dict[str, list[int]] = {}  # type -> [true positives, predicted, gold]
    for g_tags, p_tags in zip(gold, predicted):
        g, p = spans(g_tags), spans(p_tags)
        for group, key in ((g & p, 0), (p, 1), (g, 2)):
            for *_, t in group:
                counts.setdefault(t, [0, 0, 0])[key] += 1
    totals = [sum(c[k] for c in counts.values()) for k in range(3)]
    out = {}
    for name, (tp, n_pred, n_gold) in sorted(counts.items()) + [("micro", totals)]:
        precision, recall = tp / n_pred if n_pred else 0.0, tp / n_gold if n_gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {"precision": precision, "recall": recall, "f1": f1, "support": n_gold}
    return out


def read_conll(path: str | Path) -> list[dict]:
    """CoNLL ``word<TAB>tag`` lines, a blank line between sentences -> ``{"text": words, "tags": tags}``."""
    rows, words, tags = [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if parts[0].startswith("-DOCSTART-"):
                continue
            if len(parts) < 2 or not parts[0].strip():
                if words:
                    rows.append({"text": words, "tags": tags})
                words, tags = [], []
                continue
            words.append(parts[0])
            tags.append(parts[-1])
    if words:
        rows.append({"text": words, "tags": tags})
    return rows


def read_standoff(path: str | Path) -> list[dict]:
    """JSON Lines of ``{"doc_id", "text", "entities": [{"type", "start", "end"}]}`` (character offsets) ->
    one row per sentence: words split as the text encoder splits raw text, tagged IOB2 by the entity each word starts or
    continues. A sentence ends at a line break, or at . ! ? before a capital or a digit."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            doc = json.loads(line)
            text = doc["text"]
            words = split_words(text)
            tags = ["O"] * len(words)
            for ent in sorted(doc["entities"], key=lambda e: (e["start"], -e["end"])):
                inside = [i for i, (_, s, e) in enumerate(words) if s < ent["end"] and e > ent["start"]]
                if inside and all(tags[i] == "O" for i in inside):  # nested or overlapping: the outer one wins
                    tags[inside[0]] = f"B-{ent['type']}"
                    for i in inside[1:]:
                        tags[i] = f"I-{ent['type']}"
            start = 0
            for i, (word, _, end) in enumerate(words):
                following = words[i + 1] if i + 1 < len(words) else None
                boundary = following is None or "\n" in text[end : following[1]] or (
                    word in ".!?" and (following[0][0].isupper() or following[0][0].isdigit())
                    and tags[i + 1].startswith(("O", "B")))
                if boundary:
                    rows.append({"doc_id": doc.get("doc_id"), "text": [w for w, _, _ in words[start : i + 1]],
                                 "tags": tags[start : i + 1]})
                    start = i + 1
    return rows


def read_tsv(path: str | Path) -> list[dict]:
    """A tab-separated table with a header and no quoting (as ChEBI-20 ships)."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))

