"""Read the authors' released configuration files (``params/*.yaml`` of DylanAuty/PromptLearningCLIP-MDE).

Why: a researcher holding one of their configs should find our experiment for it, or learn exactly
which of its features we do not implement, without reading two code bases side by side. This module
reads a config into our vocabulary (method and training fields plus a list of unsupported features,
:func:`read_authors_config`); :func:`from_authors` turns that into an
:class:`~clipdepth.study.experiments.Experiment` and finds the matching registry row or the variant of the
closest one (``clipdepth experiments from-authors PATH``).

How their keys map (``modules/DepthCLIP.py``, ``main.py``, ``modules/MainRunnerLM.py`` at commit
0b30195):

- ``depthclip.lang_strat.templates``: ``paper`` -> our ``depthclip`` template ("This {object} is
  {depth}"), ``paper-v1`` -> ``baseline``, ``learned-static-XoYd`` -> ``XoYd``.
- ``depth_tokens``: ``paper`` -> ``depthclip-7``; ``depth-7``/``size-7``/``colour-7`` as named;
  ``learned-static-N`` -> ``learned-N``.
- ``object_tokens``: ``paper`` -> the word "object"; ``learned-static-1`` -> ``learned_object``;
  ``imgf`` (an image-feature token) is not implemented.
- ``depth_bin_centres``: ``paper`` -> ``depthclip``; ``dset-even-N`` -> ``even``; ``dset-log-N`` ->
  ``log``; ``const80-log-N`` -> ``const80-log``.
- ``img_f_dependent`` and any ``post_img_feat_stage`` / ``post_lang_corr_stage`` /
  ``post_depth_pred_stage`` other than ``depthclip`` (their decoder and upsampling variants) are not
  implemented.
- File names: ``rs`` ("random-static") parts mark configs whose contents equal the learned-static
  ones but which were evaluated untrained (``main.py --no_train_validation``), so they map to
  ``trained=False`` (and ``random-N`` depth tokens). Only the file name carries this.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clipdepth.study.experiments import EXPERIMENTS, Experiment, TrainConfig, config_hash, describe

__all__ = [
    "AuthorsConfig",
    "AuthorsMatch",
    "authors_config_from_mapping",
    "format_authors_match",
    "from_authors",
    "lang_strat_from_stem",
    "read_authors_config",
]

_TEMPLATES = {"paper": "depthclip", "paper-v1": "baseline"}
_LEARNED_TEMPLATE = re.compile(r"^learned-static-(\d+o\d+d)$")
_WORDS = {"paper": "depthclip-7", "depth-7": "depth-7", "size-7": "size-7", "colour-7": "colour-7"}
_LEARNED_WORDS = re.compile(r"^learned-static-([1-9]\d*)$")
_BINS = re.compile(r"^(dset-even|dset-log|const80-log)-([1-9]\d*)$")
_BIN_KINDS = {"dset-even": "even", "dset-log": "log", "const80-log": "const80-log"}
_OUR_XOYD = ("1o1d", "1o2d", "4o4d")
_STAGES = ("post_img_feat_stage", "post_lang_corr_stage", "post_depth_pred_stage")
_ARCHS = {"RN50": "RN50-quickgelu"}
# File-name legend (research notes section 10): template, depth, object parts after "<dataset>_rn50_".
_STEM = re.compile(r"^depthclip_(nyu|kitti)_rn50_([a-z0-9]+)_([a-z0-9]+)_([a-z0-9]+)(?:_imgfdep)?_(.+?)(?:_.*)?$")


@dataclass(frozen=True)
class AuthorsConfig:
    """One of the authors' configs in our vocabulary.

    ``method``: Experiment fields (words, template, bins, n_bins, min_depth, max_depth, arch,
    learned_object, trained). ``train``: TrainConfig fields that the config sets. ``unsupported``:
    one line per feature we do not implement (empty when the config maps fully). ``notes``: how
    something was read (e.g. the ``rs`` file-name rule).
    """

    source: str
    dataset: str
    method: dict[str, Any]
    train: dict[str, Any]
    unsupported: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)


def _get(cfg: Mapping[str, Any], dotted: str, source: str, default: Any = ...) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is not ...:
                return default
            raise ValueError(f"{source}: missing key {dotted!r}")
        node = node[part]
    return node


def lang_strat_from_stem(stem: str) -> dict[str, str] | None:
    """The language strategy a file name announces (None when it does not follow their legend).

    Legend: ``pv1`` = paper-v1, ``ls1o1d``/``rs1o1d``... = learned-static-1o1d, ``d7`` = depth-7,
    ``lsN``/``rsN`` = learned-static-N depth tokens, ``p`` = object word, ``ls1``/``rs1`` =
    learned-static-1 object token; then the bin-centre name. Also returns ``random_static``
    ("yes"/"no"/"mixed") for the ``rs`` parts.
    """
    match = _STEM.match(Path(stem).name.removesuffix(".yaml"))
    if match is None:
        return None
    dataset, tpl, depth, obj, bins = match.groups()
    parts = {"dataset": dataset, "depth_bin_centres": bins}
    xoyd = re.fullmatch(r"(ls|rs)?(\d+o\d+d)", tpl)
    if tpl == "pv1":
        parts["templates"] = "paper-v1"
    elif tpl == "pv0":
        parts["templates"] = "paper"
    elif xoyd:
        parts["templates"] = f"learned-static-{xoyd.group(2)}"
    else:
        return None
    learned_depth = re.fullmatch(r"(ls|rs)(\d+)", depth)
    if depth == "d7":
        parts["depth_tokens"] = "depth-7"
    elif learned_depth:
        parts["depth_tokens"] = f"learned-static-{learned_depth.group(2)}"
    else:
        return None
    if obj == "p":
        parts["object_tokens"] = "paper"
    elif obj in ("ls1", "rs1"):
        parts["object_tokens"] = "learned-static-1"
    else:
        return None
    prefixes = [p[:2] for p in (tpl, depth, obj) if p[:2] in ("ls", "rs")]
    if not prefixes or "rs" not in prefixes:
        parts["random_static"] = "no"
    else:
        parts["random_static"] = "yes" if set(prefixes) == {"rs"} else "mixed"
    return parts


def authors_config_from_mapping(cfg: Mapping[str, Any], source: str = "<config>") -> AuthorsConfig:
    """Map a parsed config (their YAML as a dict) to our fields; ``source`` names it in messages and
    its file name decides the ``rs`` (untrained) rule."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{source}: expected a YAML mapping at the top level, got {type(cfg).__name__}")
    if "args" in cfg and isinstance(cfg["args"], Mapping):  # their auto-saved hparams.yaml wraps it
        cfg = cfg["args"]
    unsupported: list[str] = []
    notes: list[str] = []
    dataset = _get(cfg, "basic.dataset", source)
    if dataset not in ("nyu", "kitti"):
        raise ValueError(f"{source}: basic.dataset must be 'nyu' or 'kitti', got {dataset!r}")
    model_name = _get(cfg, "model.name", source)
    if model_name != "depthclip":
        unsupported.append(f"model.name: {model_name!r} (only their 'depthclip' model is reproduced)")
    arch = _get(cfg, "depthclip.clip", source, "RN50")
    if arch not in _ARCHS:
        unsupported.append(f"depthclip.clip: {arch!r} (the registry maps only RN50 -> RN50-quickgelu)")
    strat = _get(cfg, "depthclip.lang_strat", source)

    template_key = strat.get("templates")
    learned_template = _LEARNED_TEMPLATE.match(str(template_key))
    if template_key in _TEMPLATES:
        template = _TEMPLATES[template_key]
    elif learned_template and learned_template.group(1) in _OUR_XOYD:
        template = learned_template.group(1)
    else:
        raise ValueError(f"{source}: depthclip.lang_strat.templates {template_key!r} is not one of their "
                         "templates (paper, paper-v1, learned-static-1o1d/1o2d/4o4d)")
    depth_key = strat.get("depth_tokens")
    learned_words = _LEARNED_WORDS.match(str(depth_key))
    if depth_key in _WORDS:
        words, n_words = _WORDS[depth_key], 7
    elif learned_words:
        n_words = int(learned_words.group(1))
        words = f"learned-{n_words}"
    else:
        raise ValueError(f"{source}: depthclip.lang_strat.depth_tokens {depth_key!r} is not one of theirs")
    object_key = strat.get("object_tokens")
    learned_object = object_key == "learned-static-1"
    if object_key == "imgf":
        unsupported.append("depthclip.lang_strat.object_tokens: 'imgf' (image-feature object token)")
    elif object_key not in ("paper", "learned-static-1"):
        raise ValueError(f"{source}: depthclip.lang_strat.object_tokens {object_key!r} is not one of theirs")
    bins_key = str(strat.get("depth_bin_centres"))
    bins_match = _BINS.match(bins_key)
    if bins_key == "paper":
        bins, n_bins = "depthclip", 7
    elif bins_match:
        bins, n_bins = _BIN_KINDS[bins_match.group(1)], int(bins_match.group(2))
    else:
        raise ValueError(f"{source}: depthclip.lang_strat.depth_bin_centres {bins_key!r} is not one of theirs")
    if n_bins != n_words:
        raise ValueError(f"{source}: {n_bins} bin centres ({bins_key}) for {n_words} depth tokens ({depth_key})")
    if strat.get("img_f_dependent") not in (None, "none"):
        unsupported.append(f"depthclip.lang_strat.img_f_dependent: {strat.get('img_f_dependent')!r} "
                           "(image-dependent tokens from an MLP on pooled image features)")
    for stage in _STAGES:
        value = _get(cfg, f"depthclip.{stage}", source, None)
        if value not in (None, "depthclip"):
            unsupported.append(f"depthclip.{stage}: {value!r} (their decoder/upsampling variant; we keep "
                               "the low-resolution bin head)")
    if _get(cfg, "depthclip.start_from_checkpoint", source, None):
        unsupported.append("depthclip.start_from_checkpoint (starts from their checkpoint)")

    has_learnable = learned_words is not None or template not in _TEMPLATES.values() or learned_object
    trained = has_learnable
    stem_parts = lang_strat_from_stem(source)
    if stem_parts is not None and stem_parts["random_static"] == "mixed":
        unsupported.append(f"file name {Path(source).name!r} mixes learned-static (ls) and random-static (rs) "
                           "parts; we train all tokens of a row or none")
    elif stem_parts is not None and stem_parts["random_static"] == "yes":
        trained = False
        notes.append("file name marks random-static (rs): same contents as the learned-static config, "
                     "evaluated untrained (main.py --no_train_validation); for their exact seed-42 vectors add "
                     "token_init='authors'")
        if learned_words is not None:
            words = f"random-{n_words}"
    if _get(cfg, "depthclip.freeze_clip", source, False):
        trained = False
        notes.append("depthclip.freeze_clip: True freezes the tokens too, so nothing trains")
    if not has_learnable:
        notes.append("no learnable tokens: evaluated once, untrained")

    train: dict[str, Any] = {
        "epochs": int(_get(cfg, "basic.max_epochs", source)),
        "batch_size": int(_get(cfg, "basic.batch_size", source)),
        "lr": float(_get(cfg, "optimizer.lr", source)),
        "weight_decay": float(_get(cfg, "optimizer.wd", source)),
        "div_factor": float(_get(cfg, "optimizer.div_factor", source, 25.0)),
        "final_div_factor": float(_get(cfg, "optimizer.final_div_factor", source, 1e4)),
        "grad_clip": float(_get(cfg, "optimizer.gradient_clip_val", source, 0.0)),
    }
    if _get(cfg, "optimizer.name", source) != "adamw":
        unsupported.append(f"optimizer.name: {_get(cfg, 'optimizer.name', source)!r} (only AdamW)")
    if _get(cfg, "optimizer.use_swa", source, False):
        unsupported.append("optimizer.use_swa: True (stochastic weight averaging instead of OneCycle)")
    losses = list(_get(cfg, "loss.names", source))
    coeffs = list(_get(cfg, "loss.coeffs", source, [1]))
    if losses != ["silog"] or [float(c) for c in coeffs] != [1.0]:
        unsupported.append(f"loss.names {losses} with coeffs {coeffs} (only SILog alone)")
    if not _get(cfg, "basic.use_adabins_dataloader", source, False):
        unsupported.append("basic.use_adabins_dataloader: False (their kornia augmentation pipeline)")
    method = {
        "words": words,
        "template": template,
        "bins": bins,
        "n_bins": n_bins,
        "min_depth": float(_get(cfg, f"{dataset}.min_depth", source)),
        "max_depth": float(_get(cfg, f"{dataset}.max_depth", source)),
        "arch": _ARCHS.get(arch, str(arch)),
        "learned_object": learned_object,
        "trained": trained,
    }
    return AuthorsConfig(source, dataset, method, train, tuple(unsupported), tuple(notes))


def read_authors_config(path: str | Path) -> AuthorsConfig:
    """Read one of their ``params/*.yaml`` files (or an auto-saved ``hparams.yaml``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: not valid YAML ({first})") from None
    return authors_config_from_mapping(cfg, str(path))


# ---------------------------------------------------------------------------------------------
# From a config to our experiment
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthorsMatch:
    """What :func:`from_authors` found for one of the authors' config files.

    ``experiment`` is None when the config uses a feature we do not implement (listed in
    ``config.unsupported``). ``registry`` names the rows with the same method (same config_hash);
    when empty, ``closest`` and ``changes`` give the nearest registry row and the
    :func:`variant` arguments that turn it into ``experiment``.
    """

    config: AuthorsConfig
    experiment: Experiment | None
    registry: tuple[str, ...] = ()
    closest: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)


_IDENTITY = ("name", "table", "row_label", "dataset", "train")


def _differences(base: Experiment, target: Experiment) -> dict[str, Any]:
    """The :func:`~clipdepth.study.experiments.variant` arguments that turn ``base`` into ``target``."""
    top = {f.name: getattr(target, f.name) for f in dataclasses.fields(Experiment)
           if f.name not in _IDENTITY and getattr(base, f.name) != getattr(target, f.name)}
    train = {f.name: getattr(target.train, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(base.train, f.name) != getattr(target.train, f.name)}
    return {**top, **train}


def from_authors(path: str | Path) -> AuthorsMatch:
    """Map one of the authors' ``params/*.yaml`` files to our experiment (see :mod:`.authors_configs`).

    Returns the registry rows with the same method, or the closest row and the variant changes that
    give this config; or no experiment plus the list of unsupported features.
    """
    cfg = read_authors_config(path)
    if cfg.unsupported:
        return AuthorsMatch(cfg, None)
    stem = Path(path).name.removesuffix(".yaml")
    try:
        exp = Experiment(
            name=f"authors/{cfg.dataset}/{stem}", table="authors", dataset=cfg.dataset,  # type: ignore[arg-type]
            row_label=stem, train=TrainConfig(**cfg.train), **cfg.method,
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    digest = config_hash(exp)
    same = tuple(name for name, row in EXPERIMENTS.items() if config_hash(row) == digest)
    if same:
        return AuthorsMatch(cfg, exp, same)
    candidates = [row for row in EXPERIMENTS.values() if row.dataset == exp.dataset]
    closest = min(candidates, key=lambda row: len(_differences(row, exp)))
    return AuthorsMatch(cfg, exp, (), closest.name, _differences(closest, exp))


def format_authors_match(match: AuthorsMatch) -> str:
    """The console's account of :func:`from_authors`."""
    lines = [f"{match.config.source}"]
    lines += [f"  note: {note}" for note in match.config.notes]
    if match.experiment is None:
        lines.append("  not implemented here:")
        lines += [f"    - {item}" for item in match.config.unsupported]
        return "\n".join(lines)
    if match.registry:
        lines.append(f"  = registry row(s): {', '.join(match.registry)}")
        lines.append(describe(match.registry[0]))
        return "\n".join(lines)
    args = ", ".join(f"{k}={v!r}" for k, v in match.changes.items())
    lines.append(f"  no registry row has this method; it is variant({match.closest!r}, {args})")
    lines.append(describe(match.experiment))
    return "\n".join(lines)
