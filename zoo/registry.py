"""registry.yaml: typed task specs, validated on load.

A task names its inputs (table column + encoder), a fusion, a head, its data and protocol. Encoders, fusions
and heads are ``{type: ..., **params}`` components whose params are checked against the constructor of the
registered type, so a typo in any key fails on load with the task, the key and why.
"""
from __future__ import annotations

import copy
import inspect
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from torch import nn
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from encoders import ENCODERS, ZooError
from fusion import FUSIONS
from tasks import GIVEN_SPLITS, HEADS, METRICS, READERS, SPLITS
from tasks.baselines import BASELINES

# Inside the package, so an installed wheel has it; the repository's top-level registry.yaml links here.
BUILTIN_REGISTRY = Path(__file__).resolve().parent / "registry.yaml"


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Component(BaseModel):
    """``{type: name, **params}``; params are checked against the registered class (see ``_check_params``)."""

    model_config = ConfigDict(extra="allow")
    type: str

    @property
    def params(self) -> dict:
        return dict(self.model_extra or {})


class LoraSpec(Spec):
    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)


class InputSpec(Spec):
    """A table column through an encoder. ``transfer`` says what of a pretrained encoder trains: all of it
    (train), nothing (frozen), its last ``top_k`` layers (top-k) or a LoRA delta (lora); ``lr`` overrides
    the task's learning rate for this encoder (a pretrained transformer wants a smaller one)."""

    column: str
    encoder: str
    transfer: Literal["train", "frozen", "top-k", "lora"] = "train"
    top_k: int = Field(2, gt=0)
    lora: LoraSpec = LoraSpec()
    lr: float | None = Field(None, gt=0, allow_inf_nan=False)


class HeadSpec(Component):
    targets: dict[str, str] = {}  # output name -> table column (none for a contrastive head: pairs are labels)
    unit: str | None = None

    @property
    def cls(self) -> type:
        """The registered head class of this ``type``: what it decodes to (``kind``), its ``metrics``, ``ranks``."""
        return HEADS[self.type]


class DataFile(Spec):
    """One file of a data set: its sha256, and where it can be downloaded as it is (a tar ``member`` of it)."""

    sha256: str | None = None
    url: str | None = None
    member: str | None = None


class DatasetSpec(Spec):
    """A data set as ``registry.yaml: datasets`` declares it."""

    source: str                  # canonical public source, citable
    license: str | None = None
    files: dict[str, DataFile] = {}


class DataSpec(Spec):
    dataset: str | None = None   # folder name under ZOO_DATA (a task trained only on --data needs none)
    file: str | None = None      # file inside that folder
    test_file: str | None = None  # a fixed test set beside it; then ``file`` is split into train and val only
    reader: str = "table"        # how the files are read: a table, or a corpus format (see tasks.READERS)
    test_reader: str | None = None  # how test_file is read, where it differs
    source: str | None = None    # copied in from the dataset's declaration, like ``files``
    license: str | None = None
    files: dict[str, DataFile] = {}
    split: str = "random"        # a computed split (SPLITS), or one the user gives: column or file
    split_key: str | None = None  # column a split groups by (scaffold: SMILES); default: the first input's
    split_column: str = "split"  # split: column -> the column naming each row's set (train, val or test)
    split_file: str | None = None  # split: file -> chemprop's splits JSON; seed k takes its k-th split
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seeds: list[int] = [0]

    @field_validator("reader", "test_reader")
    @classmethod
    def _known_reader(cls, v: str | None) -> str | None:
        if v is not None and v != "table" and v not in READERS:
            raise ValueError(f"unknown reader {v!r}; known: table, {', '.join(READERS)}")
        return v

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(0 <= f <= 1 for f in v) or not v[0] or not v[1] or abs(sum(v) - 1) > 1e-6:  # NaN fails too
            raise ValueError("train, validation and test fractions are each in [0, 1] and sum to 1; train and "
                             "validation are above 0 (a test fraction of 0 means no test set)")
        return v

    @field_validator("split")
    @classmethod
    def _known_split(cls, v: str) -> str:
        if v not in SPLITS and v not in GIVEN_SPLITS:
            raise ValueError(f"unknown split {v!r}; known: {', '.join([*SPLITS, *GIVEN_SPLITS])}")
        return v

    @property
    def cut_by_fractions(self) -> bool:
        """Whether the split cuts the rows in ``fractions``: not Matbench's folds, nor a split the user gives."""
        return self.split in SPLITS and self.split != "matbench-kfold"

    def describe_split(self) -> str:
        """How the rows are split, in words, for records."""
        given = {"column": f"column {self.split_column!r}", "file": f"file {self.split_file}"}
        return given.get(self.split, f"{self.split} {list(self.fractions)}")

    @model_validator(mode="after")
    def _split_file(self) -> "DataSpec":
        if (self.split == "file") != bool(self.split_file):
            raise ValueError("split: file and a split_file go together (split_file: a JSON of row indices)")
        return self


class TrainSpec(Spec):
    # Bounded, so a value that cannot train (a batch of 0, a NaN learning rate) fails on load naming its key.
    epochs: int = Field(50, gt=0)
    batch_size: int = Field(50, gt=0)
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False)
    final_lr_ratio: float = Field(0.1, ge=0, le=1)  # cosine decay ends at lr * this
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    warmup_epochs: float = Field(2.0, ge=0, allow_inf_nan=False)
    patience: int = Field(20, ge=0)  # epochs without a better validation metric before stopping
    grad_clip: float = Field(5.0, gt=0, allow_inf_nan=False)
    seed: int = Field(0, ge=0, lt=2**32)  # numpy's seeds are 32-bit
    bucket: bool = False         # batch rows of similar size together (less padding for text)
    accumulate: int = Field(1, gt=0)  # micro-batches per optimizer step (the global batch is batch_size)
    bf16: bool = True            # bfloat16 autocast, on CUDA only
    checkpoint_every: int = Field(0, ge=0)  # optimizer steps between resumable checkpoints (0: at each epoch end)
    ema: float = Field(0.0, ge=0, lt=1)  # decay of a moving average of the weights, validated and kept instead (0: off)
    ensemble: int = Field(1, ge=1)  # models trained on the one split from seeds seed, seed+1, ...; outputs averaged


class BenchSpec(Spec):
    """How ``zoo bench`` runs a task beyond its own protocol: named ``variants`` (registry overrides; the first,
    usually ``{}``, is the task as written), ``baselines`` from ``tasks.baselines`` run on the same featurized
    rows and splits, and ``quick`` overrides for the CI-sized run (on top of bench's own row and epoch caps)."""

    variants: dict[str, dict] = {"ours": {}}
    baselines: list[str] = []
    quick: dict[str, object] = {}

    @field_validator("baselines")
    @classmethod
    def _known_baselines(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in BASELINES:
                raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
        return v


class Reference(Spec):
    value: float
    std: float | None = None
    source: str


class ModelSpec(Spec):
    """What running a trained model needs, and all that loading one validates: the ``model`` of an artifact's
    config.yaml (format 2). The rest of a task entry (data, split, training, references, bench) is the artifact's
    ``provenance``, kept for the record and never validated on load, so that a change to a benchmark setting, a
    baseline or a data set's declaration never stops a saved model from loading."""

    name: str
    description: str = ""
    inputs: dict[str, InputSpec]
    encoders: dict[str, Component]
    fusion: Component
    head: HeadSpec
    metric: str = ""                # the task's metric, for information (the scores are in metrics.json)
    ensemble: int = Field(1, ge=1)  # models whose outputs are averaged (the task's train.ensemble)


# The keys of a task entry that a ModelSpec copies (with train.ensemble as its ensemble).
MODEL_KEYS = ("name", "description", "inputs", "encoders", "fusion", "head", "metric")


class TaskSpec(Spec):
    name: str
    description: str
    inputs: dict[str, InputSpec]
    encoders: dict[str, Component]  # the encoders this task's inputs use, copied in so a spec stands alone
    fusion: Component
    head: HeadSpec
    data: DataSpec
    train: TrainSpec = TrainSpec()
    metric: str
    weights: str = "bundled"        # "bundled", a folder, or hf://org/repo
    references: dict[str, Reference] = {}
    bench: BenchSpec = BenchSpec()

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        if v not in METRICS:
            raise ValueError(f"unknown metric {v!r}; known: {', '.join(METRICS)}")
        return v

    @property
    def ensemble(self) -> int:
        return self.train.ensemble

    def model_spec(self) -> ModelSpec:
        """The part of the entry a trained model needs to run (what its artifact's ``model`` holds)."""
        return ModelSpec(**{key: getattr(self, key) for key in MODEL_KEYS}, ensemble=self.train.ensemble)


def _params(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword-only arguments of a registered class: the params a registry component may give it."""
    return {name: p for name, p in inspect.signature(cls).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _check_params(where: str, key: str, registry: dict, spec: Component, skip: tuple[str, ...] = ()) -> None:
    """Validate a component's params against the keyword-only arguments of its registered class."""
    if spec.type not in registry:
        raise ZooError(f"{where}: key '{key}.type': unknown type {spec.type!r}; known: {', '.join(registry.known())}")
    cls = registry[spec.type]
    hints = typing.get_type_hints(cls.__init__, include_extras=True)  # extras: the bounds (PositiveInt, ...)
    fields = {name: (hints.get(name, typing.Any), p.default) for name, p in _params(cls).items() if name not in skip}
    model = create_model(f"{spec.type}-params", __config__=ConfigDict(extra="forbid"), **fields)
    try:
        model.model_validate(spec.params)
    except ValidationError as err:
        raise ZooError(f"{where}: {_describe(err, key)}") from None


def _check_name(where: str, key: str, name: str) -> None:
    """Input and encoder names become names of torch submodules, which cannot hold a dot, be empty, or shadow
    an attribute of torch's module dicts (``keys``, ``training``, ...)."""
    if not name or "." in name or hasattr(nn.ModuleDict(), name) or hasattr(nn.ParameterDict(), name):
        raise ZooError(f"{where}: key {key!r}: {name!r} cannot name an input or encoder (names must be non-empty, "
                       "without '.', and not a torch module attribute such as 'keys' or 'training')")


def _describe(err: ValidationError, prefix: str = "") -> str:
    first = err.errors()[0]
    key = ".".join(str(part) for part in ((prefix,) if prefix else ()) + tuple(first["loc"]))
    why = {"extra_forbidden": "unknown key", "missing": "missing required key"}.get(first["type"], first["msg"])
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"key {key!r}: {why}{more}"


# What a --set key walks through: a model's fields (a component's also its type's params), a map of names
# (inputs, encoders, references, ...), or free-form values (a bench variant's overrides).
_NOUNS = {"inputs": "input", "encoders": "encoder", "references": "reference", "targets": "target",
          "variants": "variant", "files": "file", "quick": "key"}
_COMPONENTS = {"fusion": FUSIONS, "head": HEADS, "encoders": ENCODERS}  # the registry a component's type is in


@dataclass(frozen=True)
class _Level:
    kind: Literal["model", "map", "free"]
    model: type[BaseModel] | None = None   # kind "model"
    registry: dict | None = None           # kind "model", for a component: where its type's class is registered
    value: _Level | None = None            # kind "map": what each name holds
    noun: str = "name"                     # kind "map": what a name names


def _level(annotation, field: str, registry: dict | None = None) -> _Level:
    if typing.get_origin(annotation) is dict:
        value = _level(typing.get_args(annotation)[1], field, _COMPONENTS.get(field))
        return _Level("map", value=value, noun=_NOUNS.get(field, "name"))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _Level("model", annotation, registry or _COMPONENTS.get(field))
    return _Level("free")


def _check_override(where: str, entry: dict, dotted: str) -> None:
    """Refuse a ``--set`` key that names nothing in the task entry (as resolved so far: the registry's encoders
    copied in, earlier overrides applied), in one line with the key and what there is at the level where it
    goes astray, rather than let it be dropped or land where nothing reads it. A key the entry does not write
    is fine where the schema has it: a section's field (``train.ema``), or a param of a component's type
    (``encoders.molecule-dmpnn.hidden``, a constructor argument with a default). Under a map of names (inputs,
    encoders, references, bench variants, ...) a new name may be given whole (``inputs.mass={column: smiles,
    encoder: molecule-mass}``) but not reached into (``encoders.nonexistent.dim``)."""
    parts = dotted.split(".")
    if parts[:2] == ["data", "files"]:  # _add_dataset writes it after the overrides
        raise ZooError(f"{where}: key {dotted!r}: a data set's files come from the registry's 'datasets' "
                       "declaration (a registry file of your own can declare one), not from a task's keys")
    node, level = entry, _Level("model", TaskSpec)
    for i, part in enumerate(parts):
        here = ".".join(parts[:i])
        if not isinstance(node, dict):
            raise ZooError(f"{where}: key {dotted!r}: {here!r} is {node!r}, not a mapping of keys")
        if level.kind == "free":
            return
        if level.kind == "map":
            if part not in node and i < len(parts) - 1:
                raise ZooError(f"{where}: key {dotted!r}: no {level.noun} {part!r} in this task; known at {here!r}: "
                               f"{', '.join(sorted(map(str, node))) or 'none'}")
            node, level = node.get(part, {}), level.value
            continue
        known = set(level.model.model_fields) | set(node)
        kind = node.get("type")
        cls = level.registry.get(kind) if level.registry and isinstance(kind, str) else None
        if cls:
            known |= set(_params(cls))
        if part not in known:
            what = (f"{here!r} ({kind})" if cls else repr(here)) if here else "the top level"
            raise ZooError(f"{where}: key {dotted!r}: unknown key; known at {what}: {', '.join(sorted(known))}")
        field = level.model.model_fields.get(part)
        node, level = node.get(part, {}), _level(field.annotation, part) if field else _Level("free")


def _set(entry: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = entry
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ZooError(f"--set {dotted}: {part!r} is not a mapping")
    node[leaf] = value


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    """``["train.epochs=5", ...]`` -> ``{"train.epochs": 5}``; values are read as YAML scalars or lists."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ZooError(f"--set {pair!r}: expected key=value, e.g. train.epochs=5")
        out[key.strip()] = yaml.safe_load(value)
    return out


@dataclass
class Registry:
    encoders: dict[str, dict]
    tasks: dict[str, dict]
    datasets: dict[str, DatasetSpec]
    sources: list[Path]
    origins: dict[str, Path] = field(default_factory=dict)  # task -> the registry file that defines it

    def names(self) -> list[str]:
        return sorted(self.tasks)

    def task(self, name: str, overrides: dict[str, object] | None = None) -> TaskSpec:
        if name not in self.tasks:
            raise ZooError(f"unknown task {name!r}; known: {', '.join(self.names()) or 'none'}")
        entry = copy.deepcopy(self.tasks[name])
        if not isinstance(entry, dict):
            raise ZooError(f"task {name!r}: expected a mapping of keys, got {type(entry).__name__}")
        entry["name"] = name
        self._add_encoders(entry)
        resolved = set(entry["encoders"])
        for key, value in (overrides or {}).items():
            _check_override(f"task {name!r}", entry, key)
            _set(entry, key, value)
            self._add_encoders(entry, keep=True)  # an input switched to another encoder: a later key may set it
        self._add_encoders(entry)  # now only the encoders the inputs use
        for key in overrides or {}:
            encoder = key.split(".")[1] if key.startswith("encoders.") else None
            if encoder and encoder not in entry["encoders"] and encoder not in resolved:
                raise ZooError(f"task {name!r}: key {key!r}: no input uses encoder {encoder!r}; the inputs use: "
                               f"{', '.join(sorted(entry['encoders']))}")
        self._add_dataset(entry)
        return validate_task(entry)

    def _add_dataset(self, entry: dict) -> None:
        """Copy in the declared source, license and hashes of the files the task reads."""
        data = entry.get("data")
        dataset = self.datasets.get(data.get("dataset")) if isinstance(data, dict) else None
        if dataset:
            data.setdefault("source", dataset.source)
            data.setdefault("license", dataset.license)
            data["files"] = {name: f.model_dump() for name, f in dataset.files.items()
                             if name in (data.get("file"), data.get("test_file"))}

    def _add_encoders(self, entry: dict, keep: bool = False) -> None:
        """Copy in the encoders the task's inputs name (keeping overridden copies), and only those; with ``keep``
        (between overrides) add the registry's and drop nothing: a later override may define or use the rest."""
        have, used = entry.get("encoders"), {}
        have = have if isinstance(have, dict) else {}
        for i_name, spec in (entry.get("inputs") or {}).items():
            encoder = spec.get("encoder") if isinstance(spec, dict) else None
            if encoder not in have and encoder not in self.encoders:
                if keep:
                    continue
                raise ZooError(f"task {entry['name']!r}: key 'inputs.{i_name}.encoder': unknown encoder "
                               f"{encoder!r}; known: {', '.join(sorted(self.encoders))}")
            used[encoder] = have.get(encoder) or copy.deepcopy(self.encoders[encoder])
        entry["encoders"] = {**have, **used} if keep else used


def validate_task(entry: dict) -> TaskSpec:
    """A fully resolved entry (a registry task with its encoders copied in, or a run's record) -> TaskSpec, or a
    ZooError."""
    where = f"task {entry.get('name', '?')!r}"
    try:
        spec = TaskSpec.model_validate(entry)
    except ValidationError as err:
        raise ZooError(f"{where}: {_describe(err)}") from None
    _check_model(where, spec, "", "train.ensemble")
    if spec.metric not in spec.head.cls.metrics:
        raise ZooError(f"{where}: key 'metric': {spec.metric!r} does not score a {spec.head.type} head; its metrics: "
                       f"{', '.join(spec.head.cls.metrics)}")
    return spec


def validate_model(entry: dict, where: str, prefix: str = "model.") -> ModelSpec:
    """An artifact's ``model`` -> ModelSpec, or a ZooError naming the key (under ``prefix``) and why. Only what
    building and running the model needs is checked: component types registered, their params, input names."""
    try:
        spec = ModelSpec.model_validate(entry)
    except ValidationError as err:
        raise ZooError(f"{where}: {_describe(err, prefix.rstrip('.'))}") from None
    _check_model(where, spec, prefix, f"{prefix}ensemble" if prefix == "model." else f"{prefix}train.ensemble")
    return spec


def _check_model(where: str, spec: TaskSpec | ModelSpec, prefix: str, ensemble_key: str) -> None:
    """The checks a task entry and a saved model share: what building the model needs."""
    for key, names in (("inputs", spec.inputs), ("encoders", spec.encoders)):
        for name in names:
            _check_name(where, f"{prefix}{key}", name)
    for name, inp in spec.inputs.items():
        if inp.encoder not in spec.encoders:
            raise ZooError(f"{where}: key '{prefix}inputs.{name}.encoder': no encoder {inp.encoder!r} in "
                           f"'{prefix}encoders' (there: {', '.join(spec.encoders) or 'none'})")
    for name, enc in spec.encoders.items():
        _check_params(where, f"{prefix}encoders.{name}", ENCODERS, enc)
    _check_params(where, f"{prefix}fusion", FUSIONS, spec.fusion)
    _check_params(where, f"{prefix}head", HEADS, spec.head, skip=("targets",))
    if not spec.inputs:
        raise ZooError(f"{where}: key '{prefix}inputs': a task needs at least one input")
    if spec.ensemble > 1 and spec.head.cls.ranks:
        raise ZooError(f"{where}: key '{ensemble_key}': a {spec.head.type} head ranks candidates by embeddings and "
                       "cannot be ensembled (each model's embeddings live in a space of their own)")


def safe_yaml(text: str):
    """``yaml.safe_load`` through libyaml where PyYAML has it: ten times faster, and every start reads the registry."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _read_yaml(path: Path) -> dict:
    try:
        data = safe_yaml(path.read_text())
    except FileNotFoundError:
        raise ZooError(f"registry {path}: no such file") from None
    except yaml.YAMLError as err:
        raise ZooError(f"registry {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict) or set(data) - {"encoders", "tasks", "datasets"}:
        raise ZooError(f"registry {path}: expected a mapping with 'encoders', 'tasks' and/or 'datasets'")
    return data


def load_registry(user: str | os.PathLike | None = None) -> Registry:
    """The built-in registry, extended (and overridden, name by name) by a user's registry file.

    Every task is validated here, so a malformed entry fails at once rather than when it is first used.
    """
    sources = [BUILTIN_REGISTRY] + ([Path(user)] if user else [])
    encoders, tasks, datasets, origins = {}, {}, {}, {}
    for path in sources:
        data = _read_yaml(path)
        encoders.update(data.get("encoders") or {})
        tasks.update(data.get("tasks") or {})
        origins.update(dict.fromkeys(data.get("tasks") or {}, path))
        for name, entry in (data.get("datasets") or {}).items():
            try:
                datasets[name] = DatasetSpec.model_validate(entry)
            except ValidationError as err:
                raise ZooError(f"registry {path}: dataset {name!r}: {_describe(err)}") from None
    registry = Registry(encoders, tasks, datasets, sources, origins)
    for name in registry.names():
        registry.task(name)
    return registry
