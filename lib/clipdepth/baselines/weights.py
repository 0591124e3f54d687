"""LLM-MDE's own checkpoints from local files, in the formats researchers hold them.

Why a module: notebook 05 on the paper path needs timm's ImageNet ViT-B/16 and ``bert-base-uncased``,
which cannot be downloaded on many machines (clusters without network, this one). People have them as

- timm's ViT weights: ``model.safetensors`` or ``pytorch_model.bin`` of
  ``timm/vit_base_patch16_224.augreg2_in21k_ft_in1k`` (what ``timm.create_model(..., pretrained=True)``
  puts in the Hugging Face cache), or any ``.safetensors`` /
  ``.bin`` / ``.pt`` / ``.pth`` state dict of that architecture (also wrapped as ``{"state_dict": ...}`` or
  ``{"model": ...}``);
- a Hugging Face BERT folder: ``config.json``, ``model.safetensors`` or ``pytorch_model.bin``, and ``vocab.txt``.

Every file is checked before anything is built or trained, and every problem is one line naming the
file and what was expected (:class:`clipdepth.model.checkpoints.CheckpointError`): a missing file or
``vocab.txt``, a BERT of another size, a ViT state dict of another architecture. Files are read without
executing pickled code (safetensors, or ``torch.load(weights_only=True)``). Each file's identity in run
keys is the SHA-256 of its content (:func:`clipdepth.model.checkpoints.weights_id`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipdepth.model.checkpoints import CheckpointError, weights_id

__all__ = ["BERT_WEIGHT_FILES", "bert_files_id", "check_bert_folder", "load_bert_folder", "load_vit_file",
           "read_state_file", "vit_state_dict"]

#: The weight files a Hugging Face BERT folder may hold, in the order transformers prefers them.
BERT_WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")


def read_state_file(path: str | os.PathLike[str], what: str) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a weights-only ``torch.load``able file (also wrapped
    as ``{"state_dict": ...}`` / ``{"model": ...}``); ``what`` names the expected content in errors."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: file not found; expected {what}")
    with p.open("rb") as fh:
        head = fh.read(16)
    try:
        if len(head) >= 9 and head[8:9] == b"{":  # safetensors: 8-byte header length, then JSON
            from safetensors.torch import load_file

            state: Any = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # damaged, truncated or foreign bytes: one line, no traceback
        raise CheckpointError(f"{p}: cannot be read as a state dict ({type(exc).__name__}); expected {what}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{p}: not a state dict of tensors; expected {what}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _mismatch(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str | None:
    """Why ``state`` does not fit a model whose state dict is ``expected`` (first difference), or None."""
    missing = [k for k in expected if k not in state]
    if missing:
        return f"{len(missing)} weight(s) missing (e.g. {missing[0]!r})"
    extra = [k for k in state if k not in expected]
    if extra:
        return f"{len(extra)} unexpected weight(s) (e.g. {extra[0]!r})"
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            return f"{k!r} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}"
    return None


def vit_state_dict(path: str | os.PathLike[str], model: nn.Module, vit_name: str) -> dict[str, torch.Tensor]:
    """The file's weights fitted to ``model`` (a timm ``vit_name`` built without classifier, possibly at
    another input size): the ImageNet classifier (``head.*``) is dropped and the positional embedding
    resampled to the model's grid by timm's own ``checkpoint_filter_fn``. A state dict of another
    architecture is a one-line :class:`CheckpointError` naming the first weight that differs."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    what = f"timm's {vit_name} weights (.safetensors or .bin)"
    state = read_state_file(path, what)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    expected = model.state_dict()
    pos = state.get("pos_embed")
    if pos is not None and pos.ndim == 3 and pos.shape[-1] == expected["pos_embed"].shape[-1]:
        state = checkpoint_filter_fn(state, model)  # resamples the grid of positional embeddings
    why = _mismatch(state, expected)
    if why is not None:
        raise CheckpointError(f"{path}: not a {vit_name} checkpoint: {why}")
    return state


def load_vit_file(path: str | os.PathLike[str], vit_name: str, image_size: int) -> nn.Module:
    """timm's ``vit_name`` (no classifier, ``image_size`` input) with the file's weights, strictly."""
    import timm

    model = timm.create_model(vit_name, pretrained=False, img_size=image_size, num_classes=0)
    model.load_state_dict(vit_state_dict(path, model, vit_name), strict=True)
    return model


def check_bert_folder(folder: str | os.PathLike[str], hidden: int, heads: int, vocab: int, intermediate: int,
                      layers: int) -> tuple[dict[str, Any], Path]:
    """``config.json`` of a Hugging Face BERT folder and its weight file, checked against the size
    LLM-MDE is configured for (hidden width, heads, vocabulary, MLP width, at least ``layers`` layers);
    ``vocab.txt`` must be there and hold ``vocab`` entries. One line per problem, naming the file."""
    root = Path(folder)
    expected = (f"a bert-base-uncased-sized BERT (hidden {hidden}, {heads} heads, vocabulary {vocab}, "
                f"intermediate {intermediate}, at least {layers} layers)")
    if not root.is_dir():
        raise CheckpointError(f"{root}: folder not found; expected a Hugging Face BERT folder "
                              "(config.json, model.safetensors or pytorch_model.bin, vocab.txt)")
    config_file = root / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{config_file}: file not found; expected the BERT folder's config.json")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CheckpointError(f"{config_file}: not valid JSON; expected a BERT config") from None
    if not isinstance(config, dict) or config.get("model_type", "bert") != "bert":
        kind = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(f"{config_file}: model_type {kind!r}; expected {expected}")
    got = {"hidden_size": hidden, "num_attention_heads": heads, "vocab_size": vocab, "intermediate_size": intermediate}
    for key, want in got.items():
        if config.get(key) != want:
            raise CheckpointError(f"{config_file}: {key} is {config.get(key)}; expected {expected}")
    if int(config.get("num_hidden_layers", 0)) < layers:
        raise CheckpointError(f"{config_file}: num_hidden_layers is {config.get('num_hidden_layers')}; "
                              f"expected {expected}")
    weights = next((root / n for n in BERT_WEIGHT_FILES if (root / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{root}: no {' or '.join(BERT_WEIGHT_FILES)}; expected the BERT folder's weights")
    vocab_file = root / "vocab.txt"
    if not vocab_file.is_file():
        raise CheckpointError(f"{vocab_file}: file not found; expected the BERT folder's WordPiece vocabulary "
                              f"({vocab} lines)")
    with vocab_file.open(encoding="utf-8") as fh:
        lines = sum(1 for _ in fh)
    if lines != vocab:
        raise CheckpointError(f"{vocab_file}: {lines} entries; expected {vocab} (the config's vocab_size)")
    return config, weights


def load_bert_folder(folder: str | os.PathLike[str], hidden: int, heads: int, vocab: int, intermediate: int,
                     layers: int) -> tuple[nn.Module, Any]:
    """``BertModel`` (first ``layers`` layers, no pooler) with the folder's weights, and its tokenizer
    from ``vocab.txt``; the folder is checked first (:func:`check_bert_folder`). A weight file whose
    tensors do not fit the config is a one-line :class:`CheckpointError`."""
    from transformers import BertModel, BertTokenizer
    from transformers.utils import logging as hf_logging

    config, weights = check_bert_folder(folder, hidden, heads, vocab, intermediate, layers)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the unused pre-training heads (cls.*) are expected, not news
    try:  # transformers reads its own formats (old LayerNorm gamma/beta names, the bert. prefix) weights-only
        model, info = BertModel.from_pretrained(str(folder), local_files_only=True, add_pooling_layer=False,
                                                num_hidden_layers=layers, output_loading_info=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{weights}: cannot be loaded into the BERT of {Path(folder) / 'config.json'}: "
                              f"{reason}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    if missing or info.get("mismatched_keys"):
        what = f"{len(missing)} weight(s) missing (e.g. {missing[0]!r})" if missing else \
            f"mismatched weights (e.g. {info['mismatched_keys'][0]!r})"
        raise CheckpointError(f"{weights}: does not fit {Path(folder) / 'config.json'}: {what}")
    tokenizer = BertTokenizer(vocab=_read_vocab(Path(folder) / "vocab.txt"),
                              do_lower_case=bool(config.get("do_lower_case", True)))
    return model, tokenizer


def _read_vocab(path: Path) -> dict[str, int]:
    """WordPiece ``vocab.txt``: one token per line, its id the line number (BERT's format)."""
    with path.open(encoding="utf-8") as fh:
        return {line.rstrip("\n"): i for i, line in enumerate(fh)}


def bert_files_id(folder: str | os.PathLike[str]) -> str:
    """The content identity of a BERT folder (its weights, config and vocabulary), for run keys."""
    root = Path(folder)
    weights = next((root / n for n in BERT_WEIGHT_FILES if (root / n).is_file()), None)
    parts = [weights_id(p) for p in (weights, root / "config.json", root / "vocab.txt") if p is not None]
    return "+".join(parts)
