"""Notebook 06's steps (clipdepth.report.steps.backbones) end to end on tiny settings: the support check, the
rows (lockstep-trained per architecture), the backbone table, the figure and the results file; plus the
``backbones`` parameter's declaration. Random-init towers, synthetic NYU, one epoch, 8 images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from clipdepth import report
from clipdepth.model.backbone import load_clip
from clipdepth.report.steps import backbones as steps
from clipdepth.run import params

ARCHS = ["RN50-quickgelu", "ViT-B-32-quickgelu"]
TRAIN_SIZE = (128, 160)  # demo NYU train size (clipdepth.study.experiments.PROFILES["demo"])


@pytest.fixture
def ctx(tmp_path, monkeypatch):
    """A demo notebook context with tiny settings, writing under tmp_path; environment changes undone."""
    monkeypatch.setenv("CLIPDEPTH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    p = {"profile": "demo", "datasets": ["nyu"], "data_dir": str(tmp_path / "data"), "device": "cpu",
         "seeds": [42], "epochs": 1, "subset": 8, "precision": "fp32", "train_mode": "faithful", "views": 4,
         "force": False, "allow_stale": False, "runs_dir": str(tmp_path / "runs"),
         "cache_dir": str(tmp_path / "features")}
    return report.start_notebook("06_backbones", p, profile="demo", reports_dir=tmp_path / "reports")


def test_backbone_steps_end_to_end(ctx, tmp_path, monkeypatch):
    backbones = [[a, None] for a in ARCHS] + [["ViT-B-16-SigLIP", None]]
    check = steps.check_backbone
    refusal = "prompt encoder: refused by this test"  # SigLIP runs (tests/test_backbone_towers.py); a refused
    monkeypatch.setattr(steps, "check_backbone",  # tower is listed with its reason, not run
                        lambda model, arch, *a: refusal if arch == "ViT-B-16-SigLIP" else check(model, arch, *a))
    plan = steps.plan_backbones(ctx, backbones)
    siglip = plan.backbones[2]
    assert siglip["status"] == refusal
    assert [k for k in plan.keys] == [(f"{a} (random)", "nyu", row) for a in ARCHS for row in steps.ROWS]
    assert [e.arch for e, _ in plan.specs] == [a for a in ARCHS for _ in steps.ROWS]
    assert all(w is None for _, w in plan.specs)

    rows = steps.run_backbones(ctx, plan)
    assert len(rows) == 4 and all(r["seed"] == 42 and not r["reused"] for r in rows)
    results = {(r["backbone"], r["backbone_row"]): json.loads((Path(r["run_dir"]) / "result.json").read_text())
               for r in rows}
    keys = set()
    for arch in ARCHS:
        learned = results[(f"{arch} (random)", "learned-7")]["provenance"]
        words = results[(f"{arch} (random)", "depth-7")]["provenance"]
        # the trained row ran in a lockstep group (one per architecture and data stream); the words row
        # was evaluated in a shared pass
        assert learned["lockstep_rows"] == 1 and words["shared_evaluation_rows"] == 1
        keys.add(learned["stream_key"])
        assert any(g.name.startswith(learned["stream_key"][:16]) for g in (tmp_path / "runs" / "groups").iterdir())
    assert len(keys) == len(ARCHS)  # architectures never share a stream

    table = steps.backbone_table(plan, rows)
    assert list(table.columns) == list(steps.TABLE_COLUMNS)
    assert list(table["backbone"]) == [f"{a} (random)" for a in [*ARCHS, "ViT-B-16-SigLIP"]]
    for arch, line in zip(ARCHS, table.to_dict(orient="records"), strict=False):
        model = load_clip(arch, None)
        assert line["status"] == "runs" and line["dataset"] == "nyu" and line["seeds"] == 1
        assert line["feature_stride"] == 32
        assert line["train_size"] == "128x160"
        assert line["feature_grid"] == f"{TRAIN_SIZE[0] // 32}x{TRAIN_SIZE[1] // 32}" == "4x5"
        width = model.token_embedding.embedding_dim
        assert line["trainable_params_learned7"] == 7 * width == 3584
        # ... and that is what training stored: the learned tokens and nothing else
        run_dir = next(Path(r["run_dir"]) for r in rows if r["backbone"] == line["backbone"]
                       and r["backbone_row"] == "learned-7")
        stored = torch.load(run_dir / "prompts.pt", weights_only=True)
        assert sum(t.numel() for t in stored.values()) == line["trainable_params_learned7"]
        for kind, col in (("depth-7", "words"), ("learned-7", "learned")):
            metrics = results[(line["backbone"], kind)]["metrics"]
            assert line[f"{col}_abs_rel"] == pytest.approx(metrics["abs_rel"], abs=1e-12)
            assert line[f"{col}_d1"] == pytest.approx(metrics["d1"], abs=1e-12)
    last = table.iloc[2]
    assert last["status"].startswith("not supported yet: prompt encoder")
    assert math.isnan(last["learned_abs_rel"]) and last["seeds"] == 0
    assert last["feature_stride"] == 16 and last["feature_grid"] == "8x10"

    fig = steps.plot_backbones(table)
    assert len(fig.axes) == 2 and all(len(ax.patches) == 2 * len(ARCHS) for ax in fig.axes)
    assert report.save_figure(ctx, fig, "backbones").is_file()
    saved = json.loads(report.finish_notebook(ctx, rows, extra=steps.backbone_extra(plan, table)).read_text())
    assert [b["backbone"] for b in saved["extra"]["backbone_table"]] == list(table["backbone"])
    assert saved["figures"] == ["backbones.png"] and len(saved["rows"]) == 4

    again = steps.run_backbones(ctx, plan)  # finished runs are found and reused
    assert all(r["reused"] for r in again)


def test_support_check_names_the_size_that_does_not_fit(rn50):
    assert steps.check_backbone(rn50, "RN50-quickgelu", "depthclip", {"nyu": [(128, 160)]}) is None
    # sizes the stride does not divide are rounded by the model; a size below one cell cannot be
    assert steps.check_backbone(rn50, "RN50-quickgelu", "depthclip", {"kitti": [(100, 320)]}) is None
    why = steps.check_backbone(rn50, "RN50-quickgelu", "depthclip", {"kitti": [(96, 192), (20, 320)]})
    assert why == "kitti input size 20x320 is smaller than one feature cell (stride 32)"


def test_bad_backbones_are_refused_in_one_line(ctx, tmp_path):
    with pytest.raises(ValueError, match="not an \\[architecture, pretrained tag\\] pair"):
        steps.plan_backbones(ctx, [["RN50-quickgelu"]])
    with pytest.raises(ValueError, match="unknown open_clip architecture 'RN51'"):
        steps.plan_backbones(ctx, [["RN51", None]])


def test_backbones_parameter_declaration(tmp_path):
    check = params.check_parameter
    assert check("backbones", [["RN50-quickgelu", None], ("EVA02-B-16", "merged2b_s8b_b131k")], tmp_path) == [
        ["RN50-quickgelu", None], ["EVA02-B-16", "merged2b_s8b_b131k"]]
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"x")
    assert check("backbones", [["ViT-B-32-quickgelu", "w.pt"]], tmp_path) == [["ViT-B-32-quickgelu", str(ckpt)]]
    for value, why in [
        ([["RN51", None]], "'RN51' is not an open_clip architecture"),
        ([["RN50-quickgelu", "laion9000"]], "'laion9000' is not a pretrained tag of RN50-quickgelu"),
        ([["RN50-quickgelu", "missing.pt"]], f"file {tmp_path / 'missing.pt'} does not exist"),
        ([["RN50-quickgelu", None], ["RN50-quickgelu", None]], "a pair is repeated"),
        ([], "expected a non-empty list"),
        (["RN50-quickgelu"], "'RN50-quickgelu' is not an [architecture, tag] pair"),
    ]:
        with pytest.raises(params.ParameterError, match="parameter 'backbones'") as info:
            check("backbones", value, tmp_path)
        assert why in str(info.value) and "\n" not in str(info.value)
    assert check("seeds", None, tmp_path) is None  # the profile's seeds


def test_load_clip_builds_other_open_clip_architectures_with_random_init():
    model = load_clip("convnext_tiny", None)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    again = load_clip("convnext_tiny", None)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(),
                                                     strict=True))  # seeded
    with pytest.raises(ValueError, match="any other name in open_clip.list_models"):
        load_clip("RN51")


def test_siglip_with_real_weights_needs_its_tokenizer_before_any_row(ctx, tmp_path):
    """Offline, SigLIP's Hugging Face tokenizer is missing: one line naming it, nothing trained."""
    from clipdepth.model.backbone import WeightsUnavailableError

    with pytest.raises(WeightsUnavailableError) as info:
        steps.plan_backbones(ctx, [["ViT-B-16-SigLIP", "webli"]])
    assert str(info.value).startswith("ViT-B-16-SigLIP: its text tokenizer 'timm/ViT-B-16-SigLIP' is not in the "
                                      "local Hugging Face cache") and "\n" not in str(info.value)
    assert not (tmp_path / "runs").exists()
