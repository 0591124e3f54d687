"""Named, immutable configurations for every published row we regenerate (paper Tables 3-7, DepthCLIP).

Why a registry: a table row must mean the same thing in the trainer, the notebooks, the report and
the console. Each row therefore gets one frozen :class:`Experiment` with a readable name, and
everything downstream looks it up by that name instead of re-deriving settings.

Naming scheme ``<table>/<dataset>/<row>``:

- ``<table>``: ``t3`` .. ``t7`` for Auty & Mikolajczyk (2023) paper Tables 3-7 (poster Tables 1-3
  are paper Tables 3-5), ``depthclip`` for the DepthCLIP zero-shot row (Zhang et al. 2022).
- ``<dataset>``: ``nyu`` or ``kitti``.
- ``<row>``: the varying part of the table row, in our vocabulary:

  - t3 (7 even bins, baseline template): the word set, e.g. ``learned-7``, ``depth-7``.
  - t4 (depth-7 words): the template, ``baseline``, ``1o1d``, ``1o2d``, ``4o4d``.
  - t5 (context and depth tokens both vary): ``<template>+<words>``, e.g. ``4o4d+learned-7``.
  - t6, t7 (learned depth tokens, bins vary): ``learned-<N>-<spacing>``, spacing ``even`` or ``log``.
  - depthclip: ``zero-shot``.

Rows printed in several tables (e.g. Table 6 "7, Linear" is Table 3 learned-7) keep their own names
but have identical method fields, so :func:`config_hash` is equal and the trainer runs them once.

The registry is data: ``reference/registry.csv`` holds one line per published row (name, table,
dataset, row label, words, template, bins, number of bins, trained, text normalisation, evaluation
protocol, and the authors' ``params/*.yaml`` it corresponds to, or "none released"); this module
only reads it (:func:`load_registry`). The dataset fixes the depth range. The authors' KITTI 20-log
config is ``const80-log-20``, which for KITTI's [0.001, 80] range equals ``dset-log-20``; the table
keeps their kind. :func:`clipdepth.study.authors_configs.from_authors` maps one of their config files to a
registry row or a variant; the console group lives in :mod:`clipdepth.study._cli`.

Length (about 700 lines, over the project's ~500): the method dataclasses, the registry reader,
variants, profiles and resolution form one vocabulary that the trainer, the report and the notebooks
import under these names; splitting it would need re-exports that import back into this module.

Method vs. run: an :class:`Experiment` holds only the *method* (what the paper specifies). A
:class:`Profile` (``demo`` or ``paper``) supplies where the data is, which weights, image sizes and
epoch count; :func:`resolve` combines the two and can never change a method field.

Long because: the registry, the profiles that resolve its rows and the ``clipdepth experiments``
console share one vocabulary and are read together; the console (``describe``, ``format_table``,
``add_parser``) is the piece to move out once the registry is kept as data.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import fnmatch
import hashlib
import io
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from clipdepth._files import repo_path
from clipdepth.vocab import (
    BIN_KINDS,
    DATASET_RANGES,
    DATASETS,
    TEMPLATE_CONTEXT_TOKENS,
    TEMPLATES,
    Dataset,
    parse_depth_words,
)

__all__ = [
    "BIN_KINDS",
    "DATASETS",
    "DATASET_RANGES",
    "AUTHORS_CONFIGS",
    "EXPERIMENTS",
    "PROFILES",
    "REGISTRY_COLUMNS",
    "TEMPLATES",
    "TEMPLATE_CONTEXT_TOKENS",
    "DatasetSetup",
    "Experiment",
    "Profile",
    "ResolvedExperiment",
    "TrainConfig",
    "UnknownExperimentError",
    "authors_config",
    "config_hash",
    "describe",
    "get",
    "load_registry",
    "method_fields",
    "resolve",
    "same_method",
    "select",
    "variant",
]

_NAME_FIELDS = ("name", "table", "row_label")  # identity, not method: excluded from config_hash
_MULTIPLE = 32  # RN50 output stride: input sizes must divide into whole feature cells


@dataclass(frozen=True)
class TrainConfig:
    """The authors' training hyper-parameters ([PAPER] section 4.1; every released config agrees).

    Defaults are the faithful values, so an experiment only names what differs. ``mode`` and ``bn``
    select our fast path (``cached`` features, ``frozen`` BatchNorm) vs. the authors' protocol
    (``faithful``: image encoder every step, BN running statistics adapting to the data).
    """

    epochs: int = 25
    batch_size: int = 16
    optimizer: Literal["adamw"] = "adamw"
    lr: float = 3.57e-4
    weight_decay: float = 0.1
    grad_clip: float = 0.1
    schedule: Literal["onecycle"] = "onecycle"
    div_factor: float = 25.0
    final_div_factor: float = 100.0
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    pct_start: float = 0.3
    anneal_strategy: Literal["cos"] = "cos"
    loss_alpha: float = 10.0
    loss_lambda: float = 0.85
    seed: int = 42
    mode: Literal["faithful", "cached"] = "faithful"
    bn: Literal["adapt", "frozen"] = "adapt"
    #: How the seed becomes initial tokens: ``ours`` (a private generator) or ``authors`` (their global
    #: draw sequence after ``seed_everything``; see :func:`clipdepth.model.prompt_learner.authors_initial_tokens`).
    token_init: Literal["ours", "authors"] = "ours"

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1:
            raise ValueError(f"epochs must be >= 0 and batch_size >= 1, got {self.epochs}, {self.batch_size}")
        if not self.lr > 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0; grad_clip and weight_decay must be >= 0")
        if not 0 < self.pct_start < 1:
            raise ValueError(f"pct_start must lie in (0, 1), got {self.pct_start}")
        if self.mode not in ("faithful", "cached"):
            raise ValueError(f"mode must be 'faithful' or 'cached', got {self.mode!r}")
        if self.bn not in ("adapt", "frozen"):
            raise ValueError(f"bn must be 'adapt' or 'frozen', got {self.bn!r}")
        if self.token_init not in ("ours", "authors"):
            raise ValueError(f"token_init must be 'ours' or 'authors', got {self.token_init!r}")


@dataclass(frozen=True)
class Experiment:
    """One published table row as a method configuration.

    ``name``, ``table`` and ``row_label`` identify the row; every other field is part of the method
    and enters :func:`config_hash`. ``trained=False`` rows are evaluated once without training: the
    human-word and rand-txt-7 prompts, DepthCLIP, and random-7 (the learned-7 model with its seeded
    N(0, 0.02^2) initial tokens frozen, as the authors produced it). ``learned_object`` replaces the
    word "object" by one learnable vector (the authors' ``object_tokens: learned-static-1``, file
    names ``ls1``/``rs1``).
    """

    name: str
    table: str
    dataset: Dataset
    row_label: str
    words: str
    template: str = "baseline"
    bins: str = "even"
    n_bins: int = 7
    min_depth: float = 0.001
    max_depth: float = 10.0
    arch: str = "RN50-quickgelu"
    dense_mode: str = "depthclip"
    image_norm: str = "imagenet"
    text_norm: Literal["frobenius", "per_prompt"] = "frobenius"
    logit_scale: float = 1000.0
    eval_protocol: Literal["auty2023", "depthclip"] = "auty2023"
    trained: bool = True
    learned_object: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.template not in TEMPLATES:
            raise ValueError(f"unknown template {self.template!r}; valid: {', '.join(TEMPLATES)}")
        if self.bins not in BIN_KINDS:
            raise ValueError(f"unknown bin kind {self.bins!r}; valid: {', '.join(BIN_KINDS)}")
        if parse_depth_words(self.words).n != self.n_bins:
            raise ValueError(
                f"{self.name}: word set {self.words!r} has {parse_depth_words(self.words).n} words "
                f"but n_bins={self.n_bins}"
            )
        if self.bins == "depthclip" and self.n_bins != 7:
            raise ValueError(f"{self.name}: DepthCLIP bins are a fixed list of 7")
        if not 0 < self.min_depth < self.max_depth:
            raise ValueError(
                f"{self.name}: need 0 < min_depth < max_depth, got {self.min_depth}, {self.max_depth}"
            )
        if self.text_norm not in ("frobenius", "per_prompt"):
            raise ValueError(f"{self.name}: text_norm must be 'frobenius' or 'per_prompt'")
        if self.eval_protocol not in ("auty2023", "depthclip"):
            raise ValueError(f"{self.name}: eval_protocol must be 'auty2023' or 'depthclip'")
        if not self.logit_scale > 0:
            raise ValueError(f"{self.name}: logit_scale must be > 0")
        if self.trained and self.n_trainable_tokens == 0:
            raise ValueError(
                f"{self.name}: trained=True but {self.words!r} + {self.template!r} has nothing to learn"
            )

    # Derived facts other modules need; properties so they can never disagree with the fields.
    @property
    def n_context_tokens(self) -> int:
        """Learnable context tokens of the template (shared by all bins)."""
        return TEMPLATE_CONTEXT_TOKENS[self.template]

    @property
    def learned_depth(self) -> bool:
        """Whether the depth slot holds learnable vectors (learned-N)."""
        return parse_depth_words(self.words).kind == "learned"

    @property
    def n_trainable_tokens(self) -> int:
        """512-d vectors the optimiser updates: learned depth tokens, context tokens, the object token."""
        return (self.n_bins if self.learned_depth else 0) + self.n_context_tokens + int(self.learned_object)

    @property
    def bin_range(self) -> tuple[float, float]:
        """The [min, max] the bin centres span (const80-log replaces the dataset's max by 80 m)."""
        if self.bins == "const80-log":
            return (self.min_depth, 80.0)
        return (self.min_depth, self.max_depth)


# Fields added after runs were first keyed: at their default value they are left out of the hash, so
# every earlier key (and every finished run) stays valid; any other value enters it.
_OMIT_AT_DEFAULT: dict[str, Any] = {"learned_object": False}
_TRAIN_OMIT_AT_DEFAULT: dict[str, Any] = {"token_init": "ours"}


def method_fields(exp: Experiment) -> dict[str, Any]:
    """The fields that determine an experiment's result, as a JSON-ready dict.

    Identity fields (name, table, row_label) are dropped so repeated rows compare equal. For an
    untrained row the optimiser settings cannot change the result, so only the seed and the token
    initialisation (they draw the random-7 vectors) are kept from ``train``. ``learned_object`` and
    ``token_init`` appear only when not at their defaults (see ``_OMIT_AT_DEFAULT``).
    """
    data = dataclasses.asdict(exp)
    for key in _NAME_FIELDS:
        data.pop(key)
    for key, default in _OMIT_AT_DEFAULT.items():
        if data[key] == default:
            data.pop(key)
    for key, default in _TRAIN_OMIT_AT_DEFAULT.items():
        if data["train"][key] == default:
            data["train"].pop(key)
    if not exp.trained:
        data["train"] = {k: v for k, v in data["train"].items() if k in ("seed", *_TRAIN_OMIT_AT_DEFAULT)}
    return data


def config_hash(exp: Experiment) -> str:
    """Stable sha256 (hex) of :func:`method_fields`, serialised as sorted, compact JSON.

    The trainer keys finished runs on it, so two table rows with the same method run once.
    """
    payload = json.dumps(method_fields(exp), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------


#: Columns of ``reference/registry.csv``, in file order.
REGISTRY_COLUMNS: tuple[str, ...] = (
    "name", "table", "dataset", "row_label", "words", "template", "bins", "n_bins", "trained",
    "text_norm", "eval_protocol", "authors_config", "config_note",
)
_REGISTRY_FILE = ("study", "reference", "registry.csv")
_NONE_RELEASED = "none released"


def _registry_row(line: int, row: dict[str, str], where: str) -> Experiment:
    def bad(message: str) -> ValueError:
        return ValueError(f"{where} line {line}: {message}")

    if None in row or any(value is None for value in row.values()):
        raise bad(f"expected {len(REGISTRY_COLUMNS)} fields")
    table, dataset = row["table"], row["dataset"]
    if dataset not in DATASETS:
        raise bad(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    prefix = f"{table}/{dataset}/"
    if not row["name"].startswith(prefix) or row["name"] == prefix:
        raise bad(f"name {row['name']!r} must be {prefix}<row>")
    if row["trained"] not in ("yes", "no"):
        raise bad(f"trained must be 'yes' or 'no', got {row['trained']!r}")
    if not row["n_bins"].isdigit():
        raise bad(f"n_bins must be a positive integer, got {row['n_bins']!r}")
    if row["authors_config"] != _NONE_RELEASED and not re.fullmatch(r"params/[\w.+-]+\.yaml", row["authors_config"]):
        raise bad(f"authors_config must be params/<file>.yaml or {_NONE_RELEASED!r}, got {row['authors_config']!r}")
    low, high = DATASET_RANGES[dataset]
    try:
        return Experiment(
            name=row["name"], table=table, dataset=dataset, row_label=row["row_label"], words=row["words"],
            template=row["template"], bins=row["bins"], n_bins=int(row["n_bins"]), min_depth=low, max_depth=high,
            text_norm=row["text_norm"], eval_protocol=row["eval_protocol"],  # type: ignore[arg-type]
            trained=row["trained"] == "yes",
        )
    except ValueError as exc:
        raise bad(str(exc)) from None


def load_registry(path: str | Path | None = None) -> tuple[dict[str, Experiment], dict[str, tuple[str, str]]]:
    """Read the registry table: (experiments by name in file order, name -> (authors' config, note)).

    ``path`` None reads the packaged ``reference/registry.csv``. A malformed line raises ValueError
    naming the file, the line and what is wrong.
    """
    if path is None:
        text = resources.files("clipdepth").joinpath(*_REGISTRY_FILE).read_text(encoding="utf-8")
        where = "/".join(_REGISTRY_FILE)
    else:
        text, where = Path(path).read_text(encoding="utf-8"), str(path)
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != REGISTRY_COLUMNS:
        got = ",".join(reader.fieldnames or [])
        raise ValueError(f"{where}: header must be {','.join(REGISTRY_COLUMNS)}, got {got}")
    experiments: dict[str, Experiment] = {}
    configs: dict[str, tuple[str, str]] = {}
    for line, row in enumerate(reader, start=2):
        exp = _registry_row(line, row, where)
        if exp.name in experiments:
            raise ValueError(f"{where} line {line}: duplicate name {exp.name!r}")
        experiments[exp.name] = exp
        configs[exp.name] = (row["authors_config"], row["config_note"])
    return experiments, configs


#: Every published row by name, in paper order (tables, then NYU before KITTI).
#: AUTHORS_CONFIGS: name -> (the authors' params/*.yaml or "none released", a note on it).
EXPERIMENTS, AUTHORS_CONFIGS = load_registry()


def authors_config(name: str) -> str:
    """The authors' config file of a registry row (``params/...yaml``), or "none released"."""
    get(name)
    return AUTHORS_CONFIGS[name][0]


class UnknownExperimentError(KeyError, ValueError):
    """Raised for an unknown experiment name; the message lists the closest valid names.

    Subclasses both KeyError (dict-like lookup) and ValueError (bad user input) so callers can
    catch whichever reads naturally.
    """

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


def get(name: str) -> Experiment:
    """The experiment called ``name``; an unknown name raises with the closest valid names."""
    try:
        return EXPERIMENTS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(EXPERIMENTS), n=5, cutoff=0.5)
        hint = f"did you mean: {', '.join(close)}?" if close else "see `clipdepth experiments list`"
        raise UnknownExperimentError(f"unknown experiment {name!r}; {hint}") from None


def _normalise_table(table: str | int) -> str:
    key = re.sub(r"^(table|t)", "", str(table).strip().lower().replace(" ", ""))
    return f"t{key}" if key.isdigit() else key


def select(
    table: str | int | None = None, dataset: str | None = None, pattern: str | None = None
) -> list[Experiment]:
    """Experiments filtered by table (``3``, ``"t3"``, ``"depthclip"``), dataset and name pattern.

    ``pattern`` is a shell-style glob matched against the whole name (``"*/nyu/learned-*"``); a
    pattern without wildcards matches as a substring. Order is registry (paper) order.
    """
    out: Iterable[Experiment] = EXPERIMENTS.values()
    if table is not None:
        key = _normalise_table(table)
        known = {exp.table for exp in EXPERIMENTS.values()}
        if key not in known:
            raise ValueError(f"unknown table {table!r}; valid: {', '.join(sorted(known))}")
        out = [exp for exp in out if exp.table == key]
    if dataset is not None:
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
        out = [exp for exp in out if exp.dataset == dataset]
    if pattern is not None:
        if any(ch in pattern for ch in "*?["):
            out = [exp for exp in out if fnmatch.fnmatchcase(exp.name, pattern)]
        else:
            out = [exp for exp in out if pattern in exp.name]
    return list(out)


def same_method(exp: Experiment | str) -> list[str]:
    """Names of the other registry rows with the same method (the trainer runs these once)."""
    exp = get(exp) if isinstance(exp, str) else exp
    digest = config_hash(exp)
    return [
        other.name
        for other in EXPERIMENTS.values()
        if other.name != exp.name and config_hash(other) == digest
    ]


_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_METHOD_FIELDS = {f.name for f in dataclasses.fields(Experiment)} - set(_NAME_FIELDS) - {"train", "dataset"}


def variant(exp: Experiment | str, **changes: Any) -> Experiment:
    """A copy of ``exp`` with method or training fields changed, named ``<name>[key=value,...]``.

    Why: studies beyond the paper (``mode="cached"``, ``bn="frozen"``, another ``n_bins``) need a
    config with its own hash without editing the registry. Top-level method fields and
    :class:`TrainConfig` fields may both be given; all checks of the dataclasses apply.
    """
    exp = get(exp) if isinstance(exp, str) else exp
    unknown = set(changes) - _TRAIN_FIELDS - _METHOD_FIELDS
    if unknown:
        valid = ", ".join(sorted(_METHOD_FIELDS | _TRAIN_FIELDS))
        raise TypeError(f"cannot change {', '.join(sorted(unknown))}; changeable fields: {valid}")
    train_changes = {k: v for k, v in changes.items() if k in _TRAIN_FIELDS}
    top_changes = {k: v for k, v in changes.items() if k in _METHOD_FIELDS}
    suffix = ",".join(f"{k}={changes[k]}" for k in sorted(changes))
    return dataclasses.replace(
        exp,
        name=f"{exp.name}[{suffix}]" if suffix else exp.name,
        train=dataclasses.replace(exp.train, **train_changes),
        **top_changes,
    )


# ---------------------------------------------------------------------------------------------
# Profiles: where the data is, which weights, what size, how long - never the method
# ---------------------------------------------------------------------------------------------


def _check_size(size: tuple[int, int], what: str) -> tuple[int, int]:
    if len(size) != 2:
        raise ValueError(f"{what} must be (height, width), got {size}")
    size = (int(size[0]), int(size[1]))
    if min(size) <= 0 or size[0] % _MULTIPLE or size[1] % _MULTIPLE:
        raise ValueError(f"{what} must be (height, width), positive multiples of {_MULTIPLE}, got {size}")
    return size


@dataclass(frozen=True)
class DatasetSetup:
    """Per-dataset part of a profile: data location and the input sizes the backbone sees.

    ``root`` (and ``depth_root`` for KITTI's separate annotated-depth tree) may contain
    ``{data_dir}``, replaced at resolve time by the caller's ``data_dir`` (:func:`resolve`).
    ``synthetic`` names the procedural scene family written at ``root`` (None = real data).
    Sizes are (height, width), multiples of 32 so the stride-32 feature grid has whole cells.
    """

    root: str
    train_size: tuple[int, int]
    test_size: tuple[int, int]
    depth_root: str | None = None
    synthetic: Literal["indoor", "outdoor"] | None = None

    def __post_init__(self) -> None:
        _check_size(self.train_size, "train_size")
        _check_size(self.test_size, "test_size")


@dataclass(frozen=True)
class Profile:
    """A way to run the registry: ``demo`` (offline, CPU, minutes) or ``paper`` (real data, GPU).

    ``weights``: None = random-init CLIP (seeded), ``"openai"`` = the released weights via open_clip,
    or a local file path. ``epochs``: None = the experiment's own (the paper's 25).
    """

    name: str
    description: str
    weights: str | None
    nyu: DatasetSetup
    kitti: DatasetSetup
    epochs: int | None = None
    banner: str | None = None

    def setup(self, dataset: str) -> DatasetSetup:
        """The dataset part of the profile for ``dataset``."""
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
        return getattr(self, dataset)


DEMO_BANNER = "demo: random-weight CLIP on synthetic scenes, not comparable to the paper"

PROFILES: dict[str, Profile] = {
    "demo": Profile(
        name="demo",
        description="offline CPU demo: random-init RN50 on procedural RGB-D scenes, small images, 3 epochs",
        weights=None,
        # NYU-like crops keep roughly the paper's aspect ratios at about a third of the size.
        nyu=DatasetSetup("{data_dir}/synthetic/indoor", (128, 160), (160, 224), synthetic="indoor"),
        kitti=DatasetSetup("{data_dir}/synthetic/outdoor", (96, 192), (96, 320), synthetic="outdoor"),
        epochs=3,
        banner=DEMO_BANNER,
    ),
    "paper": Profile(
        name="paper",
        description="the paper's setting: OpenAI RN50 weights, NYU Depth v2 and KITTI Eigen at full size",
        weights="openai",
        nyu=DatasetSetup("{data_dir}/nyu", (416, 544), (480, 640)),
        kitti=DatasetSetup(
            "{data_dir}/kitti/raw", (352, 704), (352, 1216), depth_root="{data_dir}/kitti/depth"
        ),
        epochs=None,
    ),
}


@dataclass(frozen=True)
class ResolvedExperiment:
    """An experiment bound to a profile: everything a run needs.

    Method fields are read through to ``experiment`` (``resolved.words`` works), so code cannot
    accidentally hold a second, diverging copy of them.
    """

    experiment: Experiment
    profile: str
    weights: str | None
    data_root: str
    depth_root: str | None
    synthetic: str | None
    train_size: tuple[int, int]
    test_size: tuple[int, int]
    epochs: int
    banner: str | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "experiment":
            raise AttributeError(name)
        return getattr(self.experiment, name)

    @property
    def config_hash(self) -> str:
        """Hash of the method alone (shared by every profile)."""
        return config_hash(self.experiment)

    @property
    def run_key(self) -> str:
        """Hash of method plus the run settings that change results (weights, data kind, sizes, epochs).

        The data root path itself is left out, so moving a dataset does not invalidate finished runs.
        """
        payload = {
            "method": config_hash(self.experiment),
            "weights": self.weights,
            "synthetic": self.synthetic,
            "train_size": list(self.train_size),
            "test_size": list(self.test_size),
            "epochs": self.epochs,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record of the run (for results.json and logs)."""
        data = dataclasses.asdict(self)
        data["config_hash"] = self.config_hash
        data["run_key"] = self.run_key
        return data


_RUN_OVERRIDES = ("data_root", "depth_root", "synthetic", "weights", "train_size", "test_size", "epochs")


#: Training modes a row can be bound to (``cached`` is the fast approximation, ``faithful`` the authors').
TRAIN_MODES: tuple[str, ...] = ("cached", "faithful")


def default_data_dir() -> str:
    """The data root a profile's ``{data_dir}`` stands for when the caller passes none.

    The one place the environment is read (``$CLIPDEPTH_DATA_DIR``, default ``data``; a relative path
    is taken from the repository root, like every path parameter, so a kernel started in
    ``notebooks/`` finds the same data): notebooks and ``./run_all.sh`` pass their ``data_dir``
    parameter explicitly, so this only serves scripts and tests that point every resolution in a
    process at one root."""
    return str(repo_path(os.environ.get("CLIPDEPTH_DATA_DIR", "data")))


def _mode_variant(exp: Experiment, mode: str | None, seed: int | None) -> Experiment:
    """``exp`` in training ``mode`` with ``seed``. ``cached`` means cached features and BN ``frozen``;
    ``faithful`` keeps the registry's BN policy (``adapt``, the authors' behaviour). Untrained rows in
    ``cached`` mode are evaluated on the cached test features too: such a row never updates BatchNorm
    statistics, so ``frozen`` and ``adapt`` are the same network and its method hash ignores the mode;
    only the fp16 storage of the cached features differs, and it saves a live image-encoder pass."""
    if mode is not None and mode not in TRAIN_MODES:
        raise ValueError(f"unknown training mode {mode!r}; valid: {', '.join(TRAIN_MODES)}")
    changes: dict[str, Any] = {}
    if seed is not None and int(seed) != exp.train.seed:
        changes["seed"] = int(seed)
    if mode == "cached" and exp.eval_protocol != "depthclip":
        changes.update(mode="cached", bn="frozen")
    elif mode == "faithful" and exp.trained and exp.train.mode != "faithful":
        changes.update(mode="faithful")
    return variant(exp, **changes) if changes else exp


def resolve(exp: Experiment | str, profile: Profile | str = "demo", mode: str | None = None, *,
            seed: int | None = None, data_dir: str | os.PathLike[str] | None = None,
            **overrides: Any) -> ResolvedExperiment:
    """Bind ``exp`` to ``profile`` in training ``mode`` (``faithful`` / ``cached``; None keeps the row's)
    with ``seed`` (None keeps the row's, the authors' 42), its ``{data_dir}`` roots under ``data_dir``
    (None: :func:`default_data_dir`), optionally overriding run settings (never method fields).

    The one binder of a row to a run: :func:`clipdepth.train.plan.resolve_rows` calls it for every notebook,
    ``./run_all.sh`` and cluster job. Allowed overrides: ``data_root``, ``depth_root``, ``synthetic``
    (the scene family at the root, or None for real data), ``weights``, ``train_size``, ``test_size``,
    ``epochs`` (``weights`` or ``epochs`` None = the profile's). Anything else raises TypeError; use
    :func:`variant` to change the method. Untrained rows resolve to 0 epochs whatever the profile says.
    """
    exp = get(exp) if isinstance(exp, str) else exp
    exp = _mode_variant(exp, mode, seed)
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
        profile = PROFILES[profile]
    bad = set(overrides) - set(_RUN_OVERRIDES)
    if bad:
        raise TypeError(
            f"resolve() cannot override {', '.join(sorted(bad))}: a profile only sets "
            f"{', '.join(_RUN_OVERRIDES)}; use experiments.variant() to change the method"
        )
    overrides = {k: v for k, v in overrides.items() if v is not None or k not in ("weights", "epochs")}
    setup = profile.setup(exp.dataset)
    root_dir = str(default_data_dir() if data_dir is None else data_dir)

    def _root(value: str | None) -> str | None:
        return None if value is None else str(value).replace("{data_dir}", root_dir)

    epochs = overrides.get("epochs", profile.epochs)
    epochs = exp.train.epochs if epochs is None else int(epochs)
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    return ResolvedExperiment(
        experiment=exp,
        profile=profile.name,
        weights=overrides.get("weights", profile.weights),
        data_root=_root(overrides.get("data_root", setup.root)) or "",
        depth_root=_root(overrides.get("depth_root", setup.depth_root)),
        synthetic=overrides.get("synthetic", setup.synthetic),
        train_size=_check_size(overrides.get("train_size", setup.train_size), "train_size"),
        test_size=_check_size(overrides.get("test_size", setup.test_size), "test_size"),
        epochs=epochs if exp.trained else 0,
        banner=profile.banner,
    )


# ---------------------------------------------------------------------------------------------
# Human-readable output and the console
# ---------------------------------------------------------------------------------------------

_DATASET_TITLES = {"nyu": "NYU Depth v2", "kitti": "KITTI (Eigen)"}


def _table_title(table: str) -> str:
    if table == "depthclip":
        return "DepthCLIP (Zhang et al. 2022), zero-shot"
    if table == "authors":
        return "the authors' config file"
    return f"paper Table {table[1:]}" if re.fullmatch(r"t\d+", table) else table


def _bins_text(exp: Experiment) -> str:
    low, high = exp.bin_range
    if exp.bins == "depthclip":
        return "depthclip-7 (fixed 1.00 ... 3.00 m)"
    return f"{exp.bins}-{exp.n_bins} over [{low:g}, {high:g}] m"


def _published(name: str) -> dict[str, float] | None:
    from clipdepth.study.reference import reference_for  # local import: reference is data, loaded on demand

    return reference_for(name)


def describe(name: str | Experiment) -> str:
    """A readable multi-line account of one experiment: method, training, repeats and paper numbers."""
    exp = get(name) if isinstance(name, str) else name
    t = exp.train
    lines = [
        f"{exp.name}",
        f"  row       : {_table_title(exp.table)}, {_DATASET_TITLES[exp.dataset]}, row {exp.row_label!r}",
        f"  backbone  : {exp.arch}, dense mode {exp.dense_mode}, {exp.image_norm} image normalisation",
        f"  prompts   : words {exp.words}, template {exp.template} "
        f"({exp.n_context_tokens} learned context tokens"
        f"{', learned object token' if exp.learned_object else ''})",
        f"  bins      : {_bins_text(exp)}",
        f"  head      : text norm {exp.text_norm}, logit scale {exp.logit_scale:g}, "
        f"eval protocol {exp.eval_protocol}",
    ]
    if exp.trained:
        lines.append(
            f"  training  : {exp.n_trainable_tokens} tokens x 512; {t.epochs} epochs, batch {t.batch_size}, "
            f"AdamW lr {t.lr:g} wd {t.weight_decay:g}, grad clip {t.grad_clip:g}, "
            f"OneCycle(div {t.div_factor:g}, final div {t.final_div_factor:g}, "
            f"momentum {t.base_momentum:g}-{t.max_momentum:g}, "
            f"pct {t.pct_start:g}), SILog(alpha {t.loss_alpha:g}, lambda {t.loss_lambda:g}), seed {t.seed}, "
            f"mode {t.mode}, BN {t.bn}, token init {t.token_init}"
        )
    else:
        if exp.n_trainable_tokens or exp.words.startswith("random-"):
            why = f"frozen initial tokens, seed {t.seed}, token init {t.token_init}"
        else:
            why = "nothing to learn"
        lines.append(f"  training  : none - evaluated once ({why})")
    if exp.name in AUTHORS_CONFIGS:
        config, note = AUTHORS_CONFIGS[exp.name]
        where = "DylanAuty/PromptLearningCLIP-MDE" if config != _NONE_RELEASED else ""
        lines.append(f"  authors'  : {config}" + (f" ({where})" if where else "") + (f"; {note}" if note else ""))
    lines.append(f"  hash      : {config_hash(exp)}")
    repeats = same_method(exp) if exp.name in EXPERIMENTS else []
    if repeats:
        lines.append(f"  same as   : {', '.join(repeats)}")
    published = _published(exp.name)
    if published:
        cells = ", ".join(f"{k} {v:g}" for k, v in published.items())
        lines.append(f"  published : {cells}")
        if "log_mse" in published:
            lines.append("              (paper 'RMSL' is stored as log_mse; see reference.PAPER_METRIC_NOTE)")
    return "\n".join(lines)


def format_table(experiments: Iterable[Experiment]) -> str:
    """A fixed-width text table of experiments (the console's ``experiments list``)."""
    header = ("name", "row", "words", "template", "bins", "trained", "paper abs_rel", "hash")
    body = []
    for exp in experiments:
        published = _published(exp.name) or {}
        abs_rel = f"{published['abs_rel']:.3f}" if "abs_rel" in published else "-"
        bins = "depthclip-7" if exp.bins == "depthclip" else f"{exp.bins}-{exp.n_bins}"
        trained = "yes" if exp.trained else "no"
        digest = config_hash(exp)[:10]
        body.append((exp.name, exp.row_label, exp.words, exp.template, bins, trained, abs_rel, digest))
    rows = [header, *body]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
