"""Resumable training checkpoints: everything a run needs to continue exactly where it was killed.

A checkpoint is one file, ``checkpoint.pt`` in the run's folder, written atomically (a kill while writing
leaves the previous one): ``torch.save``'s bytes followed by their sha256 (64 hex digits), checked before they
are read, since torch reads a damaged file without complaint. The hash travels inside the file rather than
beside it, so the one rename that puts a checkpoint in place puts its hash there too: no crash can leave a
checkpoint paired with another one's hash. It holds only tensors and plain values and is read back with
``torch.load(weights_only=True)``, which refuses anything that would run code. Model artifacts stay
safetensors; a checkpoint is the trainer's own working state, read only by ``--resume``.
"""
from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import numpy as np
import torch

from encoders import ZooError
from zoo.artifacts import atomic_write, sha256_file

NAME = "checkpoint.pt"
DIGEST = 64  # the hex sha256 at the end of the file


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": [list(x) if isinstance(x, tuple) else x
                                                         for x in random.getstate()],
             "numpy": [kind, torch.as_tensor(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, state: dict) -> None:
    def write(tmp: Path) -> None:
        torch.save(state, tmp)
        digest = sha256_file(tmp)
        with open(tmp, "ab") as f:
            f.write(digest.encode())

    atomic_write(Path(folder) / NAME, write)


def load_checkpoint(folder: Path) -> dict:
    path = Path(folder) / NAME
    if not path.is_file():
        raise ZooError(f"{folder}: nothing to resume (no {NAME})")
    data = path.read_bytes()
    body, digest = data[:-DIGEST], data[-DIGEST:]
    if hashlib.sha256(body).hexdigest().encode() != digest:
        raise ZooError(f"{path}: sha256 does not match (a damaged or modified checkpoint, or one from a SciZoo "
                       "before checkpoints carried it); train into a new --out")
    try:
        return torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as err:  # a foreign or damaged file: weights_only refuses it rather than running it
        raise ZooError(f"{path}: not a readable SciZoo checkpoint ({str(err).splitlines()[0]})") from None
