"""Checkpoint formats, their errors and content identity (issues 10 and 11).

Every supported format is written from ONE random-init RN50-quickgelu model whose weights are
rounded to fp16-representable values (OpenAI's release is fp16), and each file must load into a
network with bit-identical weights, dense features and text features. The ``.bin`` holds fp32
values, the safetensors and wrapped files fp16 and the TorchScript archive OpenAI's mix, so the cast
to the model's fp32 is exercised as well.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import convert_weights_to_fp16
from safetensors.torch import save_file
from torch import nn

from clipdepth.model import checkpoints
from clipdepth.model.backbone import CheckpointError, WeightsUnavailableError, dense_features, load_clip, weights_id
from clipdepth.model.checkpoints import EXPECTED_FORMATS, checkpoint_format, read_state_dict
from clipdepth.study import neighbours as nb

ARCH = "RN50-quickgelu"
PROMPTS = ["This object appears to be close", "This object appears to be very distant", "a photo of a room"]
#: name -> (file name, format recognised from the bytes)
FORMATS = {
    "openai_torchscript": ("RN50.pt", "torchscript"),
    "open_clip_bin": ("open_clip_pytorch_model.bin", "torch"),
    "open_clip_safetensors": ("open_clip_model.safetensors", "safetensors"),
    "wrapped_module_prefix": ("epoch_3.pth", "torch"),
    "safetensors_misnamed": ("weights.pt", "safetensors"),
}


class _StateHolder(nn.Module):
    """Holds tensors under dotted names; traced, it is a TorchScript archive with that state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0


def write_openai_archive(model: open_clip.CLIP, path: Path) -> None:
    """Write what OpenAI's ``RN50.pt`` is, as far as any loader can tell.

    Reproduced: a TorchScript zip archive (``code/``, ``constants.pkl``, ``data.pkl``) whose
    ``state_dict()`` has exactly the OpenAI CLIP keys (open_clip's ``CLIP`` uses the same names), with
    convolution / linear / attention weights and the projections in fp16 and BatchNorm / LayerNorm
    in fp32 (the casting ``convert_weights_to_fp16`` reproduces), weights as parameters and running
    statistics as buffers, plus the scalar entries ``input_resolution``, ``context_length`` and
    ``vocab_size`` that OpenAI's and open_clip's loaders drop. Not reproduced: OpenAI's forward
    graph -- ``clip.load(jit=False)``, open_clip's ``load_openai_model`` and we read only the state dict.
    """
    half = copy.deepcopy(model)
    convert_weights_to_fp16(half)
    parameters = {name for name, _ in half.named_parameters()}
    holder = _StateHolder()
    for key, value in half.state_dict().items():
        *parents, leaf = key.split(".")
        module: nn.Module = holder
        for name in parents:
            if name not in module._modules:
                module.add_module(name, nn.Module())
            module = module._modules[name]
        if key in parameters:
            module.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
        else:
            module.register_buffer(leaf, value.clone())
    for key, value in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
        holder.register_buffer(key, torch.tensor(value))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(holder, torch.zeros(1)).save(str(path))


@pytest.fixture(scope="module")
def source() -> open_clip.CLIP:
    model = load_clip(ARCH, None, seed=7)
    with torch.no_grad():
        for tensor in model.state_dict().values():  # views of the model's own storage
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    return model


@pytest.fixture(scope="module")
def files(source, tmp_path_factory) -> Iterator[dict[str, Path]]:
    """Each format once (a plain ``torch.save`` of the state dict is what open_clip's ``.bin`` is).

    About 1 GB in all (RN50 CLIP is 102 M parameters), so the folder is removed afterwards.
    """
    folder = tmp_path_factory.mktemp("checkpoints")
    state = {k: v.clone() for k, v in source.state_dict().items()}
    paths = {name: folder / filename for name, (filename, _) in FORMATS.items()}
    write_openai_archive(source, paths["openai_torchscript"])
    torch.save(state, paths["open_clip_bin"])
    half_state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}  # exact: values were rounded
    save_file(half_state, str(paths["open_clip_safetensors"]))
    # a training script's checkpoint: wrapped, with DataParallel's prefix
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in half_state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 3.57e-4, "params": [0, 1]}]}},
               paths["wrapped_module_prefix"])
    os.link(paths["open_clip_safetensors"], paths["safetensors_misnamed"])  # the format comes from the bytes
    yield paths
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def openai_loaded(files) -> open_clip.CLIP:
    return load_clip(ARCH, files["openai_torchscript"])


def _features(model: open_clip.CLIP) -> dict[str, torch.Tensor]:
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return {
            "depthclip": dense_features(model, images, "depthclip"),
            "maskclip": dense_features(model, images, "maskclip"),
            "text": model.encode_text(open_clip.tokenize(PROMPTS)),
        }


@pytest.fixture(scope="module")
def source_features(source) -> dict[str, torch.Tensor]:
    return _features(source)


@pytest.fixture(scope="module")
def source_sweep(source) -> nb.VocabSweep:
    return nb.vocab_sweep(source, "random:0", ARCH, vocab_limit=8, cache_dir=None, progress=False)


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_loads_the_same_network(name, files, source, source_features, source_sweep, openai_loaded,
                                             tmp_path):
    path = files[name]
    assert checkpoint_format(path) == FORMATS[name][1]
    model = openai_loaded if name == "openai_torchscript" else load_clip(ARCH, path)
    got, ref = model.state_dict(), source.state_dict()
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[k], ref[k]) and got[k].dtype == ref[k].dtype for k in ref)  # fp16 files -> fp32
    features = _features(model)
    assert all(torch.equal(features[k], source_features[k]) for k in source_features)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    # Table 8 from the file: the vocabulary sweep is the source model's, cached under the file's content
    sweep = nb.vocab_sweep(model, weights_id(path), ARCH, vocab_limit=8, cache_dir=tmp_path, progress=False)
    again = nb.vocab_sweep(model, weights_id(path), ARCH, vocab_limit=8, cache_dir=tmp_path, progress=False)
    assert torch.equal(sweep.features, source_sweep.features) and not sweep.from_cache and again.from_cache
    assert sweep.key["weights"] == weights_id(path) == f"sha256:{checkpoints.file_sha256(path)}"
    assert torch.equal(again.features, sweep.features)


def test_legacy_torch_save_format(tmp_path):
    """Files from torch < 1.6 (not zip archives) are read too; a small state dict is enough to show it."""
    state = {"text_projection": torch.randn(512, 1024), "logit_scale": torch.tensor(4.6)}
    path = tmp_path / "legacy.pt"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    assert checkpoint_format(path) == "torch"
    got = read_state_dict(path, ARCH, expected={k: v.shape for k, v in state.items()})
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    cut = tmp_path / "legacy_cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"^{cut}: truncated or damaged torch.save file \("):
        read_state_dict(cut, ARCH, expected=state)


def test_features_tell_different_weights_apart(rn50, source_features):
    """The equality above is not vacuous: another random init gives other features everywhere."""
    other = _features(rn50)
    assert all(not torch.equal(other[k], source_features[k]) for k in source_features)


def test_openai_archive_loads_as_open_clip_would(files, openai_loaded):
    """Our TorchScript path equals open_clip's own reader of OpenAI archives (``load_openai_model``,
    which also checks that the fixture is what it expects) and ``create_model(arch)`` + the archive's
    state dict."""
    path, ours = files["openai_torchscript"], openai_loaded
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = open_clip.load_openai_model(str(path), precision="fp32", device="cpu").requires_grad_(False)
        archive_state = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    assert archive_state["visual.conv1.weight"].dtype == torch.float16
    assert archive_state["visual.bn1.weight"].dtype == torch.float32
    for key in ("input_resolution", "context_length", "vocab_size"):
        archive_state.pop(key)
    plain = open_clip.create_model(ARCH)
    plain.load_state_dict(archive_state)
    ours_sd = ours.state_dict()
    for ref in (theirs.state_dict(), plain.state_dict()):
        assert ref.keys() == ours_sd.keys()
        assert all(torch.equal(ours_sd[k], ref[k]) for k in ref)
    tokens = open_clip.tokenize(PROMPTS)
    with torch.no_grad():
        # both frozen: with trainable weights torch's attention takes another kernel (differs by ~1e-6)
        assert torch.equal(ours.encode_text(tokens), theirs.eval().encode_text(tokens))


# ---------------------------------------------------------------------------------------------
# Bad input: one line that names the file and says what was expected
# ---------------------------------------------------------------------------------------------


def _error(path: Path, arch: str = ARCH) -> str:
    with pytest.raises(CheckpointError) as info:
        load_clip(arch, path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    assert isinstance(info.value, ValueError) and isinstance(info.value, WeightsUnavailableError)
    return message


def test_checkpoint_of_another_architecture_is_named(vit_b32, tmp_path):
    """A ViT-B-32 state dict (its keys, shapes and dtypes, stored as broadcast zeros: a 600 MB state
    dict in a few kB, since only shapes decide the message) passed for RN50-quickgelu."""
    path = tmp_path / "vit_b32.pt"
    torch.save({k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in vit_b32.state_dict().items()}, path)
    assert path.stat().st_size < 200_000
    message = _error(path)
    assert message.startswith(f"{path}: not a RN50-quickgelu checkpoint: ")
    assert "shapes differ (e.g. text_projection: 512x512 in the file, 512x1024 expected)" in message
    assert "keys missing (e.g. visual.conv1.weight)" not in message  # conv1 exists in both, with other shapes
    assert "keys missing (e.g. " in message and "unexpected keys (e.g. visual.class_embedding)" in message
    assert message.endswith("the file looks like a ViT image tower (patch 32, width 768) and 512-d joint space")


def test_incomplete_state_dict_names_the_missing_key(source, tmp_path):
    state = dict(source.state_dict())
    del state["visual.layer3.2.bn1.running_var"]
    path = tmp_path / "incomplete.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path, ARCH, expected=source.state_dict())
    assert str(info.value) == (f"{path}: not a RN50-quickgelu checkpoint: 1 keys missing "
                               "(e.g. visual.layer3.2.bn1.running_var); the file looks like a ResNet image tower "
                               "(blocks 3-4-6-3, width 64) and 1024-d joint space")


@pytest.mark.parametrize("name", ["openai_torchscript", "open_clip_bin", "open_clip_safetensors"])
def test_truncated_file(name, files, tmp_path):
    data = files[name].read_bytes()
    path = tmp_path / files[name].name
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in _error(path)


def test_safetensors_cut_inside_its_header(files, tmp_path):
    path = tmp_path / "open_clip_model.safetensors"
    path.write_bytes(files["open_clip_safetensors"].read_bytes()[:100])
    assert "truncated safetensors file (100 bytes, its header alone needs" in _error(path)


@pytest.mark.parametrize(("filename", "content"), [
    ("notes.txt", b"RN50 weights are on the shared drive\n"),
    ("config.json", json.dumps({"arch": ARCH, "weights": [1.0, 2.0]}).encode()),
    ("number.pkl", pickle.dumps(12345)),
    ("number.pt", pickle.dumps(12345, protocol=2)),
])
def test_not_a_checkpoint(filename, content, tmp_path):
    path = tmp_path / filename
    path.write_bytes(content)
    assert _error(path) == f"{path}: not a checkpoint (expected {EXPECTED_FORMATS})"
    assert EXPECTED_FORMATS == "an OpenAI TorchScript archive, an open_clip .bin/.safetensors or a state dict"


def test_torch_saved_non_state_dicts_are_not_checkpoints(tmp_path):
    number, empty = tmp_path / "number.pt", tmp_path / "empty.pt"
    torch.save(12345, number)
    empty.write_bytes(b"")
    assert _error(number) == f"{number}: not a checkpoint (expected {EXPECTED_FORMATS}); it holds an object of type int"
    assert _error(empty) == f"{empty}: not a checkpoint (expected {EXPECTED_FORMATS}); the file is empty"


CALLS: list[str] = []


def _record(what: str) -> str:
    CALLS.append(what)
    return what


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (_record, ("unpickled",))


def test_pickled_code_is_refused_not_run(source, tmp_path):
    path = tmp_path / "lightning.ckpt"
    state = {"text_projection": source.text_projection.detach().clone()}
    torch.save({"state_dict": state, "hyper_parameters": _RunsCodeWhenUnpickled()}, path)
    message = _error(path)
    assert message.startswith(f"{path}: holds a {__name__}._record object, which weights-only loading does not "
                              "execute")
    assert message.endswith("save model.state_dict() instead)")
    assert CALLS == []


def test_missing_file(tmp_path):
    path = tmp_path / "RN50.pt"
    assert _error(path) == f"{path}: weights file does not exist (expected {EXPECTED_FORMATS})"


# ---------------------------------------------------------------------------------------------
# Identity by content
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def count_hashes(tmp_path, monkeypatch) -> list[Path]:
    """Isolated id cache, empty memo, and a record of every file actually hashed."""
    monkeypatch.setenv("CLIPDEPTH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(checkpoints, "_MEMO", {})
    hashed: list[Path] = []
    real = checkpoints.file_sha256

    def counting(path):
        hashed.append(Path(path))
        return real(path)

    monkeypatch.setattr(checkpoints, "file_sha256", counting)
    return hashed


def test_weights_id_is_the_content_hash_computed_once(tmp_path, count_hashes, monkeypatch):
    path = tmp_path / "RN50.pt"
    path.write_bytes(b"first weights")
    expected = "sha256:" + hashlib.sha256(b"first weights").hexdigest()
    assert weights_id(path) == expected
    assert weights_id(str(path)) == expected and weights_id(path) == expected
    assert count_hashes == [path]  # memo
    monkeypatch.setattr(checkpoints, "_MEMO", {})  # a new process: the JSON cache answers
    assert weights_id(path) == expected
    assert count_hashes == [path]
    table = json.loads((tmp_path / "cache" / "weights_ids.json").read_text())
    assert table[str(path.resolve())]["sha256"] == expected.removeprefix("sha256:")
    copy_elsewhere = tmp_path / "moved" / "copy.pt"
    copy_elsewhere.parent.mkdir()
    copy_elsewhere.write_bytes(b"first weights")
    assert weights_id(copy_elsewhere) == expected  # content, not path


def test_replacing_the_file_gives_a_new_id(tmp_path, count_hashes):
    path = tmp_path / "RN50.pt"
    path.write_bytes(b"first weights")
    first = weights_id(path)
    stat = path.stat()
    replacement = tmp_path / "new.pt"
    replacement.write_bytes(b"other weights")  # same size
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and same mtime: only the inode differs
    os.replace(replacement, path)
    second = weights_id(path)
    assert second == "sha256:" + hashlib.sha256(b"other weights").hexdigest() != first
    path.write_bytes(b"third, longer weights")  # rewritten in place: new size and mtime
    assert weights_id(path) == "sha256:" + hashlib.sha256(b"third, longer weights").hexdigest()
    assert len(count_hashes) == 3


def test_weights_id_of_random_init_tags_and_missing_files(tmp_path, count_hashes):
    assert weights_id(None) == "random:0" and weights_id(None, 3) == "random:3"
    assert weights_id("openai") == "tag:openai"
    with pytest.raises(CheckpointError, match="weights file does not exist"):
        weights_id(tmp_path / "gone.pt")
    assert count_hashes == []


def test_unwritable_cache_still_gives_the_id(tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    monkeypatch.setenv("CLIPDEPTH_CACHE_DIR", str(blocker))
    monkeypatch.setattr(checkpoints, "_MEMO", {})
    path = tmp_path / "w.pt"
    path.write_bytes(b"abc")
    assert weights_id(path) == "sha256:" + hashlib.sha256(b"abc").hexdigest()
