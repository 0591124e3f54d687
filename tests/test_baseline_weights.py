"""LLM-MDE's towers from local files (clipdepth.baselines.weights), in the formats people hold them.

Each test writes a random-init checkpoint of the real architecture in the real format -- timm's
``vit_base_patch16_224`` state dict with its ImageNet classifier (``.safetensors`` and ``.bin``), a Hugging
Face BERT folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin`` + ``vocab.txt``, also as
saved from a pre-training model with the ``bert.`` prefix) -- and shows it loads into the same network it
was written from: identical outputs. The BERT has bert-base's every tensor shape (width 768, 12 heads,
vocabulary 30,522, MLP 3,072) but 2 layers instead of 12: the layers are copies of one shape, and 2
keep the folders at 150 MB instead of 440 MB per format. Bad files stop with one line naming the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clipdepth.baselines.llm_mde import build_llm_mde
from clipdepth.baselines.weights import check_bert_folder, load_bert_folder, load_vit_file
from clipdepth.model.checkpoints import CheckpointError

BERT = {"hidden": 768, "heads": 12, "vocab": 30522, "intermediate": 3072}
LAYERS = 2


@pytest.fixture(scope="module")
def vit_base():
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_base_patch16_224", pretrained=False).eval()  # with its 1000-class head


@pytest.fixture(scope="module")
def bert_model():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=BERT["vocab"], hidden_size=BERT["hidden"], num_hidden_layers=LAYERS,
                        num_attention_heads=BERT["heads"], intermediate_size=BERT["intermediate"])
    return BertForMaskedLM(config).eval()


def write_vit(model: torch.nn.Module, path: Path) -> Path:
    """timm's file layout: the whole state dict, classifier included."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def write_vocab(folder: Path, n: int = BERT["vocab"]) -> None:
    words = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += [f"w{i}" for i in range(n - len(words))]
    (folder / "vocab.txt").write_text("\n".join(words[:n]) + "\n", encoding="utf-8")


def write_bert(model: torch.nn.Module, folder: Path, safetensors: bool = True, whole: bool = False) -> Path:
    """A Hugging Face folder as ``save_pretrained`` writes it, plus ``vocab.txt``; ``whole`` saves the
    pre-training model (``bert.`` prefix and heads, as bert-base-uncased is published), else the encoder."""
    (model if whole else model.bert).save_pretrained(folder)  # model.safetensors (transformers 5)
    if not safetensors:  # the older pytorch_model.bin, as the published bert-base-uncased folder has it
        from safetensors.torch import load_file

        torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    write_vocab(folder)
    return folder


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_timm_vit_file_loads_into_the_same_network(vit_base, tmp_path, suffix):
    path = write_vit(vit_base, tmp_path / f"model{suffix}")
    loaded = load_vit_file(path, "vit_base_patch16_224", 224).eval()
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.forward_features(x), vit_base.forward_features(x))
    # at LLM-MDE's demo input size the positional embeddings are resampled by timm's own filter
    small = load_vit_file(path, "vit_base_patch16_224", 64)
    assert small.pos_embed.shape == (1, 17, 768) and torch.equal(small.blocks[3].mlp.fc1.weight,
                                                                    vit_base.blocks[3].mlp.fc1.weight)


@pytest.mark.parametrize(("safetensors", "whole"), [(True, False), (False, False), (True, True), (False, True)])
def test_bert_folder_loads_into_the_same_network(bert_model, tmp_path, safetensors, whole):
    folder = write_bert(bert_model, tmp_path / "bert", safetensors, whole)
    assert (folder / ("model.safetensors" if safetensors else "pytorch_model.bin")).is_file()
    bert, tokenizer = load_bert_folder(folder, **BERT, layers=LAYERS)
    ids = torch.tensor([[101, 2000, 2003, 1037, 3231, 102], [101, 7592, 2088, 102, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        ref = bert_model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        got = bert.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(got, ref)
    assert len(tokenizer.get_vocab()) == BERT["vocab"] and tokenizer.convert_tokens_to_ids("w0") == 104


def test_llm_mde_builds_from_the_files(vit_base, bert_model, tmp_path):
    """The files reach the model LLM-MDE trains: its towers hold the written weights (LoRA adapters
    start at zero, so the adapted towers still compute the written networks)."""
    vit_file = write_vit(vit_base, tmp_path / "vit.safetensors")
    folder = write_bert(bert_model, tmp_path / "bert", whole=True)
    model = build_llm_mde("nyu", pretrained=True, vit_file=str(vit_file), bert_folder=str(folder),
                          bert_layers=LAYERS, image_size=64, n_prototypes=10, d_keys=8)
    state = model.bert.state_dict()
    assert torch.equal(state["embeddings.word_embeddings.weight"], bert_model.bert.embeddings.word_embeddings.weight)
    assert len(model.tokenizer.get_vocab()) == BERT["vocab"]
    assert torch.equal(model.vit.patch_embed.proj.weight, vit_base.patch_embed.proj.weight)


# -- bad files: one line naming the file and what was expected ----------------------------------------


def _one_line(exc: pytest.ExceptionInfo, start: str, *parts: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(start), msg
    for part in parts:
        assert part in msg, msg


def test_missing_vocab_txt(bert_model, tmp_path):
    folder = write_bert(bert_model, tmp_path / "bert")
    (folder / "vocab.txt").unlink()
    with pytest.raises(CheckpointError) as exc:
        load_bert_folder(folder, **BERT, layers=LAYERS)
    _one_line(exc, f"{folder / 'vocab.txt'}: file not found; expected the BERT folder's WordPiece vocabulary "
                   "(30522 lines)")


def test_bert_folder_of_the_wrong_size(tmp_path):
    from transformers import BertConfig, BertModel

    small = BertModel(BertConfig(vocab_size=BERT["vocab"], hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=1024))
    folder = tmp_path / "bert-small"
    small.save_pretrained(folder)
    write_vocab(folder)
    with pytest.raises(CheckpointError) as exc:
        check_bert_folder(folder, **BERT, layers=LAYERS)
    _one_line(exc, f"{folder / 'config.json'}: hidden_size is 256; expected a bert-base-uncased-sized BERT "
                   "(hidden 768, 12 heads, vocabulary 30522, intermediate 3072, at least 2 layers)")
    with pytest.raises(CheckpointError) as exc:  # enough width, too few layers for the configured model
        check_bert_folder(folder, 256, 4, BERT["vocab"], 1024, 12)
    _one_line(exc, f"{folder / 'config.json'}: num_hidden_layers is 2; expected", "at least 12 layers")


def test_bert_weights_that_do_not_fit_their_config(bert_model, tmp_path):
    folder = write_bert(bert_model, tmp_path / "bert")
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    state.pop("encoder.layer.1.output.dense.weight")
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError) as exc:
        load_bert_folder(folder, **BERT, layers=LAYERS)
    _one_line(exc, f"{folder / 'model.safetensors'}: does not fit {folder / 'config.json'}: 1 weight(s) missing "
                   "(e.g. 'encoder.layer.1.output.dense.weight')")


def test_vit_file_of_another_architecture(tmp_path):
    import timm

    other = write_vit(timm.create_model("vit_small_patch16_224", pretrained=False), tmp_path / "small.safetensors")
    with pytest.raises(CheckpointError) as exc:
        load_vit_file(other, "vit_base_patch16_224", 224)
    _one_line(exc, f"{other}: not a vit_base_patch16_224 checkpoint: ", "expected (1, 1, 768)")
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError) as exc:
        load_vit_file(missing, "vit_base_patch16_224", 224)
    _one_line(exc, f"{missing}: file not found; expected timm's vit_base_patch16_224 weights (.safetensors or .bin)")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError) as exc:
        load_vit_file(junk, "vit_base_patch16_224", 224)
    _one_line(exc, f"{junk}: cannot be read as a state dict")


def test_notebook_05_checks_every_file_before_training(bert_model, tmp_path, monkeypatch):
    """``check_baseline_files`` (the notebook's setup cell) stops at a bad file before any row runs, and
    the ``llm_mde_*`` parameters are checked by run_all before that."""
    from clipdepth import report
    from clipdepth.report.steps import baselines as compare
    from clipdepth.run import params

    monkeypatch.setenv("CLIPDEPTH_DATA_DIR", str(tmp_path / "data"))
    folder = write_bert(bert_model, tmp_path / "bert")
    p = {"profile": "demo", "datasets": ["nyu"], "device": "cpu", "runs_dir": str(tmp_path / "runs"),
         "llm_mde_bert": str(folder), "llm_mde_options": {"bert_layers": LAYERS}}
    ctx = report.start_notebook("05_baselines", p, profile="demo", reports_dir=tmp_path / "reports")
    lines = compare.check_baseline_files(ctx)
    assert lines == ["CLIP RN50-quickgelu: random init", "LLM-MDE ViT (vit_base_patch16_224): random init",
                     f"LLM-MDE BERT (2 layers): {folder}"]
    (folder / "vocab.txt").unlink()
    with pytest.raises(CheckpointError, match="vocab.txt: file not found"):
        compare.check_baseline_files(ctx)
    assert not (tmp_path / "runs").exists()  # nothing trained

    assert params.check_parameter("llm_mde_bert", str(folder), tmp_path) == str(folder)
    for name, value, why in [("llm_mde_vit", "nope.safetensors", f"file {tmp_path / 'nope.safetensors'} does not"),
                             ("llm_mde_bert", "nobert", f"folder {tmp_path / 'nobert'} does not exist"),
                             ("llm_mde_options", {"n_protos": 3}, "unknown LLM-MDE option(s) n_protos")]:
        with pytest.raises(params.ParameterError, match=f"parameter '{name}'") as info:
            params.check_parameter(name, value, tmp_path)
        assert why in str(info.value) and "\n" not in str(info.value)
