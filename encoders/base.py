"""The encoder contract shared by every modality, and the typed registries every component type is kept in.

An encoder is a torch module with four members, written below as the ``Encoder`` protocol: ``featurize(raw)`` (one
raw cell -> its ``Features``, on the CPU; raises ``InputError`` on bad input), ``collate(features)`` (a list of
features, ``None`` where a row lacks the modality -> a batch), ``forward(batch)`` (-> ``Tokens(x [B, T, out_dim],
mask [B, T])``) and ``out_dim`` (the width of its tokens). What else an encoder may have (``featurize_many``, a
pretrained ``backbone``, ``set_transfer``, ``merge_lora``) is the ``EncoderExtras`` protocol.

Encoders register themselves by type name with ``@register_encoder``, as timm registers models; registration checks
the class against the protocol, so a class lacking a member fails at import, naming it. Installed packages add
types through entry points (``scizoo.encoders``, ``scizoo.fusions``, ``scizoo.heads``): see ``TypeRegistry``.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Protocol

import numpy as np
import torch
from annotated_types import Ge, Gt, Lt
from pydantic import AllowInfNan

# The largest file a table cell may name (an encoder may set a smaller bound): a cell naming a 50 GB file
# is a per-row error, not a job that stalls on reading it.
MAX_FILE_BYTES = 256 << 20


# Bounded types for constructor arguments. The registry checks a component's params against its constructor's
# type hints, so a width of 0 or a dropout of 2 fails on load with the key, not as a traceback from torch.
PositiveInt = Annotated[int, Gt(0)]
PositiveFloat = Annotated[float, Gt(0), AllowInfNan(False)]
Fraction = Annotated[float, Ge(0), Lt(1)]  # a probability that must leave something (dropout)


def building_on_meta() -> bool:
    """Whether modules are being built on the ``meta`` device (shapes only, no memory): a constructor that
    would read pretrained weights builds the bare architecture instead, and caches nothing."""
    return torch.get_default_device().type == "meta"


class ZooError(Exception):
    """An error a user can fix; its message is one line that says what, where and why."""


class InputError(ZooError, ValueError):
    """One raw input that cannot be featurized; names the modality and the reason."""

    def __init__(self, modality: str, why: str):
        self.modality, self.why = modality, why
        super().__init__(f"{modality}: {why}")


def input_file(text: str, modality: str, max_bytes: int = MAX_FILE_BYTES) -> Path:
    """The file a table cell names, checked before anything reads it. Relative paths are taken from the data
    root when the user sets one (``ZOO_DATA_ROOT``, or ``zoo predict --data-root``), and a path that leaves
    that root (``..``, an absolute path, a symlink) is refused, so a table cannot make a job read any file.
    Devices, pipes and files over ``max_bytes`` are refused too."""
    root = os.environ.get("ZOO_DATA_ROOT")
    path = Path(text).expanduser()
    if root and not path.is_absolute():
        path = Path(root) / path
    try:
        resolved = path.resolve(strict=True)
    except FileNotFoundError:
        raise InputError(modality, f"no such file {text!r}") from None
    except (OSError, RuntimeError, ValueError) as err:  # a symlink loop (RuntimeError before Python 3.13), a NUL
        raise InputError(modality, f"cannot resolve {text!r}: {err}") from None  # byte in the name (ValueError)
    if root and not resolved.is_relative_to(Path(root).resolve()):
        raise InputError(modality, f"{text!r} points outside the data root {root}")
    if not resolved.is_file():
        raise InputError(modality, f"{text!r} is not a file")
    size = resolved.stat().st_size
    if size > max_bytes:
        raise InputError(modality, f"{text!r} is {size:,} bytes, over the limit of {max_bytes:,}")
    return resolved


@dataclass
class Tokens:
    """A padded set of tokens: ``x`` [B, T, D] and ``mask`` [B, T], True where a token is real."""

    x: torch.Tensor
    mask: torch.Tensor


# -- contracts ------------------------------------------------------------------------------------------------
# Written as typing.Protocols: the members a component must have, with their shapes. A registry checks a class
# against its protocol when it is added (``check_contract``): a method or property must be defined on the class, a
# ``ClassVar`` must have a value there, and a plain annotation (an attribute set in ``__init__``) must at least be
# declared on the class. Inheriting the protocol satisfies nothing: the class itself must define each member.


class ContractError(ZooError, TypeError):
    """A class registered without a member its contract requires; the message names the class and the member."""


class Features(Protocol):
    """What ``Encoder.featurize`` returns for one cell: a dataclass whose fields are numpy arrays and ints, nothing
    else (the feature cache stores each field concatenated over rows and rebuilds a row with ``cls(*fields)``;
    features are pickled to and from DataLoader workers), named by ``featurize``'s return annotation.

    ``size``: the row's size for batching, in the units its tokens cost (atoms, word pieces, spectrum points).
    Rows are sorted by the sum over a row's inputs and batched up to a token budget (rows x the longest row), and
    ``train.bucket`` groups rows of similar size. Rows all of one size (an image, a spectrum on its grid) are never
    cut by the budget, so an input of a fixed shape may say 1.

    Optional: ``elements()``, the atomic number of each atom a row holds (molecules, crystals, compositions), by which a trust
    summary (``zoo.trust``) flags rows with an element no training row had."""

    @property
    def size(self) -> int: ...


class Encoder(Protocol):
    """A modality encoder: a torch module built from a registry entry's params (keyword-only constructor arguments,
    type-hinted: the registry validates a task's params against the hints), with these members.

    Shapes: ``featurize(raw)`` -> one ``Features``; ``collate([Features | None] * B)`` -> a batch (usually a dict
    of tensors; a ``None`` row lacks the modality and gets an all-False mask); ``forward(batch)`` -> ``Tokens(x
    [B, T, out_dim], mask [B, T] bool)``; ``out_dim``, the width D of its tokens, an int set in ``__init__`` (and
    declared on the class, ``out_dim: int``). Optional members: ``EncoderExtras``."""

    out_dim: int

    def featurize(self, raw: Any) -> Features:
        """One raw table cell (a SMILES, a path, a list of numbers...) -> its features, on the CPU (it runs in
        DataLoader workers); raises ``InputError(modality, why)`` for a cell it cannot use. The return annotation
        names the features dataclass (the feature cache reads it)."""
        ...

    def collate(self, features: list[Features | None]) -> Any:
        """B rows' features (``None`` where a row lacks the modality) -> one batch for ``forward``."""
        ...

    def forward(self, batch: Any) -> Tokens:
        """A batch -> ``Tokens(x [B, T, out_dim], mask [B, T])``; a row without the modality has no True in mask."""
        ...


class EncoderExtras(Protocol):
    """Members an encoder may add. Code looks each up by name and does without it; none is checked.

    - ``featurize_many(raws)``: many cells -> a list holding each cell's features, or its ``InputError`` in its place
      (one bad cell never fails the others), for an encoder faster over many cells at once (a backbone run on a
      batch). ``featurize_cells`` uses it where there is one.
    - ``backbone``: one line naming a pretrained part that loading rebuilds from an installed package
      (``"transformers==4.46 all-MiniLM-L6-v2"``). Its frozen parameters are not saved with a trained model; the
      artifact's provenance records the line.
    - ``set_transfer(strategy, *, top_k, lora_r, lora_alpha, lora_dropout)``: what of the pretrained part trains
      for ``inputs.<name>.transfer`` (``frozen``, ``top-k``, ``lora``). Without it an input may only ``train``
      (everything) or be ``frozen`` (nothing).
    - ``merge_lora()``: fold LoRA deltas into the backbone for prediction (``zoo.load`` calls it)."""

    backbone: str

    def featurize_many(self, raws: list) -> list: ...

    def set_transfer(self, strategy: str, *, top_k: int = 2, lora_r: int = 8, lora_alpha: int = 16,
                     lora_dropout: float = 0.1) -> None: ...

    def merge_lora(self) -> None: ...


def _qualname(cls) -> str:
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', repr(cls))}"


def _is_protocol(klass: type) -> bool:
    return bool(klass.__dict__.get("_is_protocol"))


def contract_members(contract: type) -> dict[str, bool]:
    """The members a protocol requires, in order: name -> whether the class must give it a value (a method, a
    property, a ``ClassVar``) rather than declare it (an attribute each instance sets)."""
    members: dict[str, bool] = {}
    for klass in reversed(contract.__mro__):
        if not _is_protocol(klass) or klass is Protocol:
            continue
        for name, hint in klass.__dict__.get("__annotations__", {}).items():
            members[name] = "ClassVar" in str(hint)
        for name in vars(klass):
            if not name.startswith("_") and name not in members:
                members[name] = True
    return members


def _defines(cls: type, name: str, with_value: bool) -> bool:
    """Whether ``cls`` (or a base of its own, not torch's Module nor a protocol) defines, or declares, ``name``."""
    for klass in cls.__mro__:
        if klass is object or klass is torch.nn.Module or _is_protocol(klass):
            continue
        if name in vars(klass) or (not with_value and name in klass.__dict__.get("__annotations__", {})):
            return True
    return False


def check_contract(cls, contract: type, what: str) -> None:
    """Refuse ``cls``, registered as ``what`` ("encoder type 'x'"), when it lacks a member of ``contract``."""
    if not isinstance(cls, type):
        raise ContractError(f"{what}: {cls!r} is not a class")
    for name, with_value in contract_members(contract).items():
        if not _defines(cls, name, with_value):
            how = "" if with_value else f" (declare it on the class, e.g. '{name}: ...', and set it in __init__)"
            raise ContractError(f"{what}: class {_qualname(cls)} has no {name!r}, a member of the {contract.__name__} "
                                f"contract ({_qualname(contract)}){how}")


def check_keyword(cls: type, what: str, name: str, contract: str) -> None:
    """Refuse ``cls`` when its constructor takes no keyword-only ``name`` (the registry passes it by name)."""
    param = inspect.signature(cls).parameters.get(name)
    if param is None or param.kind is not inspect.Parameter.KEYWORD_ONLY:
        raise ContractError(f"{what}: class {_qualname(cls)} takes no keyword-only {name!r}, a member of the {contract}")


def features_type(cls: type, what: str = "encoder") -> type:
    """The ``Features`` dataclass an encoder class's ``featurize`` returns, from its return annotation."""
    try:
        hint = typing.get_type_hints(getattr(cls, "featurize")).get("return")
    except Exception as err:  # a name the annotations use is not defined in their module
        raise ContractError(f"{what}: the annotations of {_qualname(cls)}.featurize cannot be resolved "
                            f"({type(err).__name__}: {err})") from None
    if hint is None:
        raise ContractError(f"{what}: {_qualname(cls)}.featurize has no return annotation naming its Features class")
    return hint


def check_features(features, what: str, encoder: type) -> None:
    """``encoder.featurize``'s return annotation ``features`` is a ``Features`` class: a dataclass of numpy arrays and
    ints, with ``size``."""
    where = f"{what}: {_qualname(encoder)}.featurize returns"
    if not (isinstance(features, type) and dataclasses.is_dataclass(features)):
        raise ContractError(f"{where} {features!r}, not a dataclass (the Features contract, encoders.base.Features)")
    check_contract(features, Features, f"{where} {_qualname(features)}")
    hints = typing.get_type_hints(features)
    for field in dataclasses.fields(features):
        if hints.get(field.name) not in (np.ndarray, int):
            raise ContractError(f"{where} {_qualname(features)}, whose field {field.name!r} is "
                                f"{hints.get(field.name)!r}: the feature cache stores numpy arrays and ints only "
                                "(the Features contract)")


def check_encoder(cls, what: str) -> None:
    check_contract(cls, Encoder, what)
    check_features(features_type(cls, what), what, cls)


class TypeRegistry(dict):
    """Registered types of one kind by name (encoders, fusions, heads): a dict, checked on the way in.

    ``register(name)`` is a class decorator and ``add(name, cls)`` the same as a call; ``check(cls, what)`` (the
    kind's contract) runs on each, so a class lacking a member fails when its module is imported, in one line
    naming the member. A name not registered is looked up among the entry points of ``group`` that installed
    packages declare (``[project.entry-points."scizoo.encoders"] protein = "scizoo_protein:ProteinEncoder"``):
    that entry point alone is loaded, checked and added, so a plugin is imported only when a task names its type.
    A class that registers itself when its module is imported may name that same class in its entry point."""

    def __init__(self, kind: str, check: Callable[[type, str], None] | None = None, group: str | None = None):
        super().__init__()
        self.kind, self.check, self.group = kind, check, group

    def add(self, name: str, cls):
        if dict.__contains__(self, name):
            raise ContractError(f"{self.kind} type {name!r} is registered twice ({_qualname(dict.__getitem__(self, name))} "
                                f"and {_qualname(cls)})")
        if self.check is not None:
            self.check(cls, f"{self.kind} type {name!r}")
        dict.__setitem__(self, name, cls)
        return cls

    def register(self, name: str) -> Callable[[type], type]:
        return lambda cls: self.add(name, cls)

    def __missing__(self, name):
        cls = self._plugin(name)
        if cls is None:
            raise KeyError(name)
        return cls

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, name) or self._plugin(name) is not None

    def get(self, name, default=None):
        try:
            return self[name]
        except KeyError:
            return default

    def known(self) -> list[str]:
        """Every name: the registered ones and those installed plugins offer (not loaded)."""
        return sorted(set(self) | {ep.name for ep in self._entry_points()})

    def _entry_points(self, name: str | None = None):
        if not self.group:
            return ()
        from importlib.metadata import entry_points  # 30 ms at startup, and only a name no module registers needs it

        return entry_points(group=self.group, **({"name": name} if name is not None else {}))

    def _plugin(self, name):
        if not isinstance(name, str):
            return None
        for ep in self._entry_points(name):
            where = f"{self.kind} type {name!r}: plugin {ep.value!r}" + (f" of {ep.dist.name}" if ep.dist else "")
            try:
                obj = ep.load()
            except Exception as err:  # a broken plugin: one line, not its traceback
                why = str(err).splitlines()[0] if str(err) else ""
                raise ZooError(f"{where} cannot be loaded ({type(err).__name__}: {why})") from None
            if dict.get(self, name) is obj:  # it registered itself when imported
                return obj
            return self.add(name, obj)
        return None


ENCODERS = TypeRegistry("encoder", check_encoder, group="scizoo.encoders")


def featurize_cells(encoder: torch.nn.Module, raws: list) -> list:
    """Each cell's features from ``encoder``, or the ``InputError`` it raised: through its ``featurize_many``
    where it has one, else ``featurize`` cell by cell."""
    if hasattr(encoder, "featurize_many"):
        return encoder.featurize_many(raws)
    results = []
    for raw in raws:
        try:
            results.append(encoder.featurize(raw))
        except InputError as err:
            results.append(err)
    return results


def register_encoder(name: str) -> Callable[[type], type]:
    """Class decorator: register an encoder type under ``name``, checked against the ``Encoder`` contract."""
    return ENCODERS.register(name)


def build_encoder(name: str, **config) -> torch.nn.Module:
    if name not in ENCODERS:
        raise ZooError(f"unknown encoder type {name!r}; registered: {', '.join(ENCODERS.known())}")
    encoder = ENCODERS[name](**config)
    out_dim = getattr(encoder, "out_dim", None)
    if not isinstance(out_dim, int) or isinstance(out_dim, bool) or out_dim <= 0:
        raise ContractError(f"encoder type {name!r}: {_qualname(type(encoder))}.out_dim is {out_dim!r} once built, "
                            "not a positive int (the Encoder contract, encoders.base.Encoder)")
    return encoder


def pad_tokens(h: torch.Tensor, row: torch.Tensor, pos: torch.Tensor, batch_size: int) -> Tokens:
    """Scatter flat per-item vectors ``h`` [N, D] of rows ``row`` at positions ``pos`` into padded tokens."""
    length = int(pos.max()) + 1 if pos.numel() else 1
    x = h.new_zeros(batch_size, length, h.shape[-1])
    mask = torch.zeros(batch_size, length, dtype=torch.bool, device=h.device)
    x[row, pos] = h
    mask[row, pos] = True
    return Tokens(x, mask)


def token_index(rows: list[int], sizes: np.ndarray, batch_size: int) -> dict:
    """The batch row and position of every token, for ``pad_tokens``; ``rows`` holds ``sizes`` tokens each."""
    sizes = np.asarray(sizes, dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    return {
        "row": torch.as_tensor(np.repeat(np.asarray(rows, dtype=np.int64), sizes), dtype=torch.long),
        "pos": torch.as_tensor(np.arange(sizes.sum()) - np.repeat(starts, sizes), dtype=torch.long),
        "size": batch_size,
    }


def concat(arrays: list[np.ndarray], dtype, width: int | None = None) -> torch.Tensor:
    """Concatenate per-row arrays (an empty batch gives an empty tensor of the right shape)."""
    if arrays:
        return torch.as_tensor(np.concatenate(arrays).astype(dtype))
    return torch.as_tensor(np.zeros((0,) if width is None else (0, width), dtype=dtype))
