"""The paper path rehearsed end to end: ``./run_all.sh --profile paper --subset N`` on paper-shaped data.

Why: ``--profile paper`` is what users come for. The fixture is
:func:`clipdepth.data.paper_shaped.write_paper_shaped` (the real NYU / KITTI layouts at full resolution,
full-length BTS lists of which only the first frames exist) and a weights *file* for every model, in the
format users have: an OpenAI-style TorchScript ``RN50.pt`` written from a random-init RN50-quickgelu (the
CLIP of notebooks 01-06), timm's ViT-B/16 ``.safetensors`` and a Hugging Face BERT folder (``config.json``,
``model.safetensors``, ``vocab.txt``; bert-base's width, 2 layers) for LLM-MDE. The run uses the paper's
sizes on CPU (416x544 train crops, 480x640 / 352x1216 test), so it keeps ``--subset 2`` and one epoch.

Covered: all six notebooks in one ``run_all`` -- Tables 3-7 (01-03, both datasets), Table 8 (04, a
40-token vocabulary sweep of the trained learned-7 run), the baselines (05: DepthCLIP, learned-7,
CLIP2Depth on RN50 and LLM-MDE from its files, one epoch each, a small reprogramming layer) and the
backbone notebook (06, restricted to RN50 from the same file) -- the ``--plan`` output, and bad input at
the ``./run_all.sh`` level (a subset larger than the lists, a listed file missing, an 8-bit depth PNG, a
checkpoint of another architecture, ``device=cuda`` without CUDA), each stopping before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_baseline_weights import BERT, LAYERS, write_bert, write_vit
from test_checkpoints import write_openai_archive

from clipdepth.data.paper_shaped import write_paper_shaped

REPO = Path(__file__).resolve().parents[1]
SUBSET = 2
NYU_LABEL = f"subset: {SUBSET} of 24,231 train / 654 test"
KITTI_LABEL = f"subset: {SUBSET} of 23,158 train / 697 test"
#: The paper's Tables 3-7, per dataset: table -> row labels (untrained rows are evaluated, not trained).
TABLE_ROWS: dict[str, tuple[str, ...]] = {
    "t3": ("colour-7", "size-7", "depth-7", "random-7", "rand-txt-7", "learned-7"),
    "t4": ("Baseline", "1o1d", "1o2d", "4o4d"),
    "t5": ("Baseline, learned-7", "ls4o4d, depth-7", "ls4o4d, learned-7"),
    "t6": ("7, Linear", "7, Log", "20, Linear", "20, Log"),
    "t7": ("7", "20", "256"),
}
NOTEBOOKS = ("01_token_ablation", "02_context_tokens", "03_bins")
ALL_NOTEBOOKS = (*NOTEBOOKS, "04_nearest_neighbours", "05_baselines", "06_backbones")
VOCAB_LIMIT = 40


def _env() -> dict[str, str]:
    """./run_all.sh runs this interpreter with this checkout's ``lib`` (not an installed copy)."""
    path = os.pathsep.join(p for p in (str(REPO / "lib"), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "CLIPDEPTH_PYTHON": sys.executable, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}


def run_all(args: list[str], timeout: int = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "run_all.sh"), *args], capture_output=True, text=True, env=_env(),
                          timeout=timeout, cwd=str(REPO))


@pytest.fixture(scope="module")
def shaped(tmp_path_factory) -> Path:
    """A paper-shaped root with full-length lists and the first ``SUBSET`` frames of each on disk."""
    root = tmp_path_factory.mktemp("paper_shaped")
    write_paper_shaped(root, n_train=SUBSET, n_test=SUBSET)
    return root


@pytest.fixture(scope="module")
def weights(rn50, tmp_path_factory) -> Path:
    """OpenAI's RN50.pt as ``clip.load`` caches it (a TorchScript archive), from a random-init model."""
    path = tmp_path_factory.mktemp("weights") / "RN50.pt"
    write_openai_archive(rn50, path)
    return path


@pytest.fixture(scope="module")
def baseline_files(tmp_path_factory) -> dict[str, Path]:
    """LLM-MDE's checkpoints as people hold them: timm's ViT-B/16 state dict (with its ImageNet head) and
    a Hugging Face BERT folder saved from a pre-training model (bert-base's width, 2 layers)."""
    import timm
    from transformers import BertConfig, BertForMaskedLM

    root = tmp_path_factory.mktemp("baseline_weights")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vit = write_vit(timm.create_model("vit_base_patch16_224", pretrained=False), root / "vit_b16.safetensors")
        bert = BertForMaskedLM(BertConfig(vocab_size=BERT["vocab"], hidden_size=BERT["hidden"],
                                          num_hidden_layers=LAYERS, num_attention_heads=BERT["heads"],
                                          intermediate_size=BERT["intermediate"]))
    return {"vit": vit, "bert": write_bert(bert, root / "bert-base-uncased", whole=True)}


def _later_notebooks(weights: Path, files: dict[str, Path]) -> list[str]:
    """Notebooks 04-06 on the rehearsal's budget: a small vocabulary, every baseline for one epoch from
    its files (CLIP2Depth on the study's RN50, LLM-MDE with a small reprogramming layer), and notebook 06
    on RN50 from the same file."""
    options = json.dumps({"bert_layers": LAYERS, "n_prototypes": 100, "d_keys": 32})
    return ["-p", "vocab_limit", str(VOCAB_LIMIT), "-p", "clip2depth_arch", "RN50-quickgelu",
            "-p", "clip2depth_epochs", "1", "-p", "llm_mde_epochs", "1", "-p", "llm_mde_vit", str(files["vit"]),
            "-p", "llm_mde_bert", str(files["bert"]), "-p", "llm_mde_options", options,
            "-p", "llm_mde_image_size", "64", "-p", "backbones", json.dumps([["RN50-quickgelu", str(weights)]])]


def _paper_args(data: Path, weights: Path, work: Path, *extra: str) -> list[str]:
    return ["--profile", "paper", "--subset", str(SUBSET), "-p", "data_dir", str(data), "-p", "weights", str(weights),
            "-p", "epochs", "1", "--reports-dir", str(work / "reports"), "-p", "runs_dir", str(work / "runs"),
            "-p", "cache_dir", str(work / "cache"), *extra]


def test_plan_prints_the_groups_and_the_data_check_without_running(shaped, weights, tmp_path) -> None:
    proc = run_all(_paper_args(shaped, weights, tmp_path, "--only", "01,02,03", "--plan"), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "run_all: plan for profile paper (3 notebook(s)); nothing is run" in out
    # one evaluation-only group and one lockstep group of the 9 trained rows per dataset
    for dataset in ("nyu", "kitti"):
        assert f"t3/{dataset}/colour-7" in out and f"t7/{dataset}/learned-256-log" in out
    assert out.count("lockstep    seeds [42] epochs 1: 9 row(s)") == 2
    assert out.count("shared-eval seeds [42] epochs 0: 5 row(s)") == 2
    assert "image reads" in out and "MB written" in out
    assert "estimated wall time unknown (nothing measured: run `clipdepth bench" in out
    # the prerequisite check decoded the subset (one KITTI test line of the first two has no ground truth)
    assert (f"data check: every listed file decoded, no problems (nyu train {SUBSET}, nyu test {SUBSET}, "
            f"kitti train {SUBSET}, kitti test {SUBSET - 1} frame(s))") in out
    assert not any((tmp_path / d).exists() for d in ("reports", "runs", "cache"))


def test_paper_rehearsal_end_to_end(shaped, weights, baseline_files, tmp_path) -> None:
    """All six notebooks: every row of Tables 3-7 on both datasets, Table 8, the baselines and the
    backbone notebook, each labelled with its subset and protocol, no verdicts."""
    t0 = time.perf_counter()
    proc = run_all(_paper_args(shaped, weights, tmp_path, "-p", "device", "auto",
                               *_later_notebooks(weights, baseline_files)))
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"paper rehearsal (6 notebooks, subset {SUBSET}, 1 epoch, CPU): {seconds:.0f} s")
    out = tmp_path / "reports" / "paper"
    page = (out / "index.html").read_text(encoding="utf-8")
    assert NYU_LABEL in page and KITTI_LABEL in page
    assert "within tolerance" not in page.replace("no verdict", "")

    found: dict[tuple[str, str, str], dict] = {}
    for name in NOTEBOOKS:
        results = json.loads((out / name / "results.json").read_text(encoding="utf-8"))
        assert results["profile"] == "paper" and results["parameters"]["subset"] == SUBSET
        assert results["device"] == "cpu"  # "auto" on a machine without CUDA
        assert results["weights"]["requested"] == str(weights)
        assert results["verdicts"] is False
        assert results["comparison"] and all(c["within_tolerance"] is None and c["verdict"] is None
                                             for c in results["comparison"])
        for row in results["rows"]:
            key = (row["table"], row["dataset"], row["row_label"])
            assert key not in found, f"{key} reported twice"
            found[key] = row
    expected = {(t, d, label) for t, labels in TABLE_ROWS.items() for d in ("nyu", "kitti") for label in labels}
    assert set(found) == expected

    for (table, dataset, label), row in found.items():
        protocol = row["protocol"]
        assert row["subset_label"] == (NYU_LABEL if dataset == "nyu" else KITTI_LABEL), (table, dataset, label)
        assert row["seed"] == 42 and protocol["seed"] == 42
        assert protocol["bn"] == "adapt" and protocol["precision"] == "fp32" and protocol["subset"] == SUBSET
        assert protocol["mode"] == ("faithful" if row["trained"] else "untrained")
        assert row["epochs"] == (1 if row["trained"] else 0)
        assert np.isfinite(row["abs_rel"]) and 0 <= row["d1"] <= 1
    untrained = {key for key, row in found.items() if not row["trained"]}
    assert untrained == {(t, d, label) for d in ("nyu", "kitti") for t, label in
                         [("t3", "colour-7"), ("t3", "size-7"), ("t3", "depth-7"), ("t3", "random-7"),
                          ("t3", "rand-txt-7"), ("t4", "Baseline")]}
    _later_notebooks_ran(out, weights, baseline_files, found)


def _results(out: Path, name: str, weights: Path) -> dict:
    """A notebook's results.json, with what every notebook of the rehearsal must say."""
    results = json.loads((out / name / "results.json").read_text(encoding="utf-8"))
    assert results["profile"] == "paper" and results["parameters"]["subset"] == SUBSET, name
    assert results["verdicts"] is False, name
    assert all(c.get("within_tolerance") is None and c.get("verdict") is None for c in results["comparison"]), name
    assert results["rows"], name
    return results


def _later_notebooks_ran(out: Path, weights: Path, files: dict[str, Path], found: dict) -> None:
    # 04: Table 8 from the trained learned-7 run (the same run as Table 3's row), a 40-token sweep
    t8 = _results(out, "04_nearest_neighbours", weights)
    (row,) = t8["rows"]
    table3 = found[("t3", "nyu", "learned-7")]
    assert row["experiment"] == "t3/nyu/learned-7" and row["run_dir"] == table3["run_dir"]
    assert row["subset_label"] == NYU_LABEL and row["protocol"]["mode"] == "faithful" and row["epochs"] == 1
    assert t8["weights"]["requested"] == str(weights)
    sweep = t8["extra"]["top_k"]["sweep"]  # computed from the weights file, cached under its content hash
    assert sweep["key"]["weights"] == t8["weights"]["id"] and t8["weights"]["id"].startswith("sha256:")
    assert sweep["key"]["vocab_limit"] == VOCAB_LIMIT and VOCAB_LIMIT < sweep["tokens"] < VOCAB_LIMIT + 20
    assert len(t8["extra"]["top_k"]["prompt"]) == 7 * 15  # 15 neighbours of each learned depth token
    assert t8["extra"]["anomaly"]["tables"]["learned"]  # the anomaly check ran on the same sweep
    assert {"projection_pca.png", "projection_tsne.png", "neighbours_over_epochs.png"} <= set(t8["figures"])

    # 05: every method on both datasets (DepthCLIP on NYU only), LLM-MDE from its files
    base = _results(out, "05_baselines", weights)
    keys = {(r["experiment"], r["dataset"]) for r in base["rows"]}
    assert keys == {("depthclip/nyu/zero-shot", "nyu"), ("baselines/nyu/depthclip-metric", "nyu"),
                    *{(f"t3/{d}/learned-7", d) for d in ("nyu", "kitti")},
                    *{(f"baselines/{d}/{m}", d) for d in ("nyu", "kitti") for m in ("clip2depth", "llm-mde")}}
    for r in base["rows"]:
        assert np.isfinite(r["abs_rel"]) and 0 <= r["d1"] <= 1, r["experiment"]
        assert r["subset_label"] == (NYU_LABEL if r["dataset"] == "nyu" else KITTI_LABEL), r["experiment"]
        if r["experiment"].startswith("baselines/") and r["trained"]:  # CLIP2Depth, LLM-MDE: one epoch, one step
            assert r["epochs"] == 1 and r["steps"] == 1, r["experiment"]
        if r["experiment"].endswith("/llm-mde"):
            assert np.isfinite(r["norm_abs_rel"])
            saved = json.loads((Path(r["run_dir"]) / "result.json").read_text(encoding="utf-8"))
            assert saved["config"]["tokenizer"] == "bert-base-uncased"  # the folder's 30,522-entry vocab.txt
            assert saved["config"]["model"]["bert_layers"] == LAYERS
        if r["experiment"] == "t3/nyu/learned-7":  # the same run as Table 3's
            assert r["run_dir"] == table3["run_dir"] and r["protocol"] == table3["protocol"]

    # 06: RN50 from the weights file, both rows on both datasets, "runs" in the table
    bb = _results(out, "06_backbones", weights)
    assert {(r["backbone"], r["dataset"], r["backbone_row"]) for r in bb["rows"]} == {
        (f"RN50-quickgelu ({weights})", d, k) for d in ("nyu", "kitti") for k in ("depth-7", "learned-7")}
    assert all(r["subset_label"] == (NYU_LABEL if r["dataset"] == "nyu" else KITTI_LABEL) for r in bb["rows"])
    lines = bb["extra"]["backbone_table"]
    assert [(x["dataset"], x["status"], x["train_size"]) for x in lines] == [("nyu", "runs", "416x544"),
                                                                            ("kitti", "runs", "352x704")]


# -- bad input: one line per problem, exit 3, nothing written ------------------------------------------


def _assert_stopped(proc: subprocess.CompletedProcess, work: Path, line: str) -> None:
    assert proc.returncode == 3, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == "run_all: the paper profile cannot start; missing prerequisites:"
    assert line in lines, proc.stderr
    assert lines[-1].startswith("Nothing was run.")
    assert not any((work / d).exists() for d in ("reports", "runs", "cache"))


@pytest.fixture
def copy_of(shaped, tmp_path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(shaped, data)
    return data


def _first(list_file: Path) -> list[str]:
    return list_file.read_text().splitlines()[0].split()


def test_subset_larger_than_the_list(shaped, weights, tmp_path) -> None:
    args = _paper_args(shaped, weights, tmp_path, "--only", "01", "-p", "datasets", "nyu")
    args[args.index("--subset") + 1] = "100000"
    proc = run_all(args, timeout=600)
    listing = shaped / "nyu" / "nyudepthv2_test_files_with_gt.txt"
    _assert_stopped(proc, tmp_path, f"  - nyu test: {listing}: subset=100000 is larger than the list, which has "
                                    "654 lines; use subset <= 654 or None for the whole list")


def test_a_listed_file_missing_inside_the_subset(copy_of, weights, tmp_path) -> None:
    listing = copy_of / "nyu" / "nyudepthv2_test_files_with_gt.txt"
    rgb = copy_of / "nyu" / "official_splits" / "test" / _first(listing)[0]
    rgb.unlink()
    proc = run_all(_paper_args(copy_of, weights, tmp_path, "--only", "01", "-p", "datasets", "nyu"), timeout=600)
    _assert_stopped(proc, tmp_path, f"  - nyu test: 1 of the files listed in {listing} are missing (e.g. {rgb})")


def test_an_eight_bit_depth_png_inside_the_subset(copy_of, weights, tmp_path) -> None:
    listing = copy_of / "kitti" / "raw" / "eigen_train_files_with_gt.txt"
    depth = next((copy_of / "kitti" / "depth").glob(f"*/{_first(listing)[1]}"))
    Image.fromarray((np.asarray(Image.open(depth)) // 256).astype(np.uint8)).save(depth)
    proc = run_all(_paper_args(copy_of, weights, tmp_path, "--only", "01", "-p", "datasets", "kitti"), timeout=600)
    _assert_stopped(proc, tmp_path, f"  - kitti train: {depth}: depth PNG has mode 'L' (8-bit or colour); expected "
                                    f"a 16-bit single-channel PNG (line 1 of {listing})")


def test_a_checkpoint_of_another_architecture(shaped, vit_b32, tmp_path) -> None:
    wrong = tmp_path / "ViT-B-32.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in vit_b32.state_dict().items()}, wrong)
    proc = run_all(_paper_args(shaped, wrong, tmp_path, "--only", "01", "-p", "datasets", "nyu"), timeout=600)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    line = next(x for x in proc.stderr.splitlines() if x.startswith("  - CLIP weights: "))
    assert line.startswith(f"  - CLIP weights: {wrong}: not a RN50-quickgelu checkpoint: ")
    assert line.endswith("the file looks like a ViT image tower (patch 32, width 768) and 512-d joint space")
    _assert_stopped(proc, tmp_path, line)


def test_device_cuda_without_cuda(shaped, weights, tmp_path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = run_all(_paper_args(shaped, weights, tmp_path, "-p", "device", "cuda"), timeout=600)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == ("run_all: error: parameter 'device': 'cuda' is not allowed (no CUDA device is available on "
                           "this machine); allowed: cpu | auto | cuda | cuda:N (cuda only where a CUDA device is "
                           "available)\n")
    assert not any((tmp_path / d).exists() for d in ("reports", "runs", "cache"))
