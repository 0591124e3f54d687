"""The experiments registry: names, method fields, hashing, profiles and the console."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import pytest

from clipdepth.study import _cli as experiments_cli
from clipdepth.study import experiments as ex
from clipdepth.study.experiments import (
    EXPERIMENTS,
    PROFILES,
    DatasetSetup,
    Experiment,
    TrainConfig,
    UnknownExperimentError,
    config_hash,
    describe,
    get,
    method_fields,
    resolve,
    select,
    variant,
)

_T3 = ["colour-7", "size-7", "depth-7", "random-7", "rand-txt-7", "learned-7"]
_T4 = ["baseline", "1o1d", "1o2d", "4o4d"]
_T5 = ["baseline+learned-7", "4o4d+depth-7", "4o4d+learned-7"]
_T6 = ["learned-7-even", "learned-7-log", "learned-20-even", "learned-20-log"]
_T7 = ["learned-7-log", "learned-20-log", "learned-256-log"]
EXPECTED_NAMES = [
    f"{table}/{ds}/{row}"
    for table, rows in (("t3", _T3), ("t4", _T4), ("t5", _T5), ("t6", _T6), ("t7", _T7))
    for ds in ("nyu", "kitti")
    for row in rows
] + ["depthclip/nyu/zero-shot"]

# Groups of rows that are one run printed in several tables (per dataset).
SAME_METHOD = [
    ["t3/{d}/depth-7", "t4/{d}/baseline"],
    ["t3/{d}/learned-7", "t5/{d}/baseline+learned-7", "t6/{d}/learned-7-even"],
    ["t4/{d}/4o4d", "t5/{d}/4o4d+depth-7"],
    ["t6/{d}/learned-7-log", "t7/{d}/learned-7-log"],
    ["t6/{d}/learned-20-log", "t7/{d}/learned-20-log"],
]


def test_registry_names_in_paper_order() -> None:
    assert list(EXPERIMENTS) == EXPECTED_NAMES
    assert len(EXPERIMENTS) == 41


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_name_matches_fields(name: str) -> None:
    exp = EXPERIMENTS[name]
    table, dataset, _ = name.split("/")
    assert exp.name == name and exp.table == table and exp.dataset == dataset
    assert (exp.min_depth, exp.max_depth) == ex.DATASET_RANGES[dataset]


def test_experiments_are_frozen() -> None:
    exp = get("t3/nyu/learned-7")
    with pytest.raises(dataclasses.FrozenInstanceError):
        exp.words = "depth-7"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        exp.train.lr = 1.0  # type: ignore[misc]


def test_authors_hyper_parameters() -> None:
    t = TrainConfig()
    assert (t.epochs, t.batch_size, t.lr, t.weight_decay, t.grad_clip) == (25, 16, 3.57e-4, 0.1, 0.1)
    assert (t.div_factor, t.final_div_factor, t.base_momentum, t.max_momentum, t.pct_start) == (
        25.0,
        100.0,
        0.85,
        0.95,
        0.3,
    )
    assert (t.loss_alpha, t.loss_lambda, t.seed, t.mode, t.bn) == (10.0, 0.85, 42, "faithful", "adapt")
    assert all(exp.train == t for exp in EXPERIMENTS.values())


def test_common_method_fields() -> None:
    for exp in EXPERIMENTS.values():
        assert exp.arch == "RN50-quickgelu"
        assert exp.dense_mode == "depthclip"
        assert exp.image_norm == "imagenet"
        assert exp.logit_scale == 1000.0
        is_depthclip = exp.table == "depthclip"
        assert exp.text_norm == ("per_prompt" if is_depthclip else "frobenius")
        assert exp.template == "depthclip" if is_depthclip else exp.template != "depthclip"


def test_untrained_rows() -> None:
    untrained = {name for name, exp in EXPERIMENTS.items() if not exp.trained}
    expected = {f"t3/{d}/{w}" for d in ("nyu", "kitti") for w in _T3[:-1]}
    expected |= {"t4/nyu/baseline", "t4/kitti/baseline", "depthclip/nyu/zero-shot"}
    assert untrained == expected
    random7 = get("t3/nyu/random-7")
    assert random7.words == "random-7" and random7.n_trainable_tokens == 0


@pytest.mark.parametrize(
    ("name", "words", "template", "bins", "n_bins", "n_trainable"),
    [
        ("t3/nyu/learned-7", "learned-7", "baseline", "even", 7, 7),
        ("t3/kitti/rand-txt-7", "rand-txt-7", "baseline", "even", 7, 0),
        ("t4/nyu/1o1d", "depth-7", "1o1d", "even", 7, 2),
        ("t4/kitti/1o2d", "depth-7", "1o2d", "even", 7, 3),
        ("t4/kitti/4o4d", "depth-7", "4o4d", "even", 7, 8),
        ("t5/nyu/4o4d+learned-7", "learned-7", "4o4d", "even", 7, 15),
        ("t6/nyu/learned-20-log", "learned-20", "baseline", "log", 20, 20),
        ("t6/kitti/learned-7-log", "learned-7", "baseline", "log", 7, 7),
        ("t6/kitti/learned-20-log", "learned-20", "baseline", "const80-log", 20, 20),
        ("t7/nyu/learned-256-log", "learned-256", "baseline", "log", 256, 256),
        ("depthclip/nyu/zero-shot", "depthclip-7", "depthclip", "depthclip", 7, 0),
    ],
)
def test_row_methods(name: str, words: str, template: str, bins: str, n_bins: int, n_trainable: int) -> None:
    exp = get(name)
    assert (exp.words, exp.template, exp.bins, exp.n_bins) == (words, template, bins, n_bins)
    assert exp.n_trainable_tokens == n_trainable


def test_kitti_const80_log_equals_dataset_log() -> None:
    # The authors' KITTI 20-log run used const80-log; over KITTI's range that is the dataset log range.
    exp = get("t6/kitti/learned-20-log")
    assert exp.bin_range == (exp.min_depth, exp.max_depth) == (0.001, 80.0)
    assert get("t6/nyu/learned-20-log").bin_range == (0.001, 10.0)


@pytest.mark.parametrize("dataset", ["nyu", "kitti"])
def test_repeated_rows_share_a_hash(dataset: str) -> None:
    hashes = {name: config_hash(exp) for name, exp in EXPERIMENTS.items() if exp.dataset == dataset}
    grouped: set[str] = set()
    for group in SAME_METHOD:
        names = [g.format(d=dataset) for g in group]
        assert len({hashes[n] for n in names}) == 1, names
        assert ex.same_method(names[0]) == names[1:]
        grouped.update(names)
    # every other row is a distinct method
    others = [h for n, h in hashes.items() if n not in grouped]
    assert len(set(others)) == len(others)
    assert len(set(hashes.values())) == len(hashes) - sum(len(g) - 1 for g in SAME_METHOD)


def test_config_hash_is_sha256_of_sorted_method_json() -> None:
    exp = get("t5/kitti/4o4d+learned-7")
    fields = method_fields(exp)
    assert not {"name", "table", "row_label"} & set(fields)
    expected = hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert config_hash(exp) == expected
    assert len(config_hash(exp)) == 64


def test_config_hash_is_stable_across_processes() -> None:
    # A fresh interpreter with another str-hash seed must give the same digest (no reliance on hash()).
    code = (
        "from clipdepth.study.experiments import EXPERIMENTS, config_hash; "
        "print(config_hash(EXPERIMENTS['t7/nyu/learned-256-log']))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == config_hash(get("t7/nyu/learned-256-log"))


def test_config_hash_tracks_method_only() -> None:
    exp = get("t3/nyu/learned-7")
    renamed = dataclasses.replace(exp, name="x", table="y", row_label="z")
    assert config_hash(renamed) == config_hash(exp)
    assert config_hash(dataclasses.replace(exp, n_bins=20, words="learned-20")) != config_hash(exp)
    assert config_hash(variant(exp, lr=1e-3)) != config_hash(exp)
    assert config_hash(variant(exp, bn="frozen")) != config_hash(exp)
    # For an untrained row only the seed can change the result.
    zero_shot = get("t3/nyu/depth-7")
    assert config_hash(variant(zero_shot, lr=1e-3, mode="cached")) == config_hash(zero_shot)
    assert config_hash(variant(get("t3/nyu/random-7"), seed=7)) != config_hash(get("t3/nyu/random-7"))


def test_variant() -> None:
    fast = variant("t3/nyu/learned-7", mode="cached", bn="frozen")
    assert fast.name == "t3/nyu/learned-7[bn=frozen,mode=cached]"
    assert (fast.train.mode, fast.train.bn) == ("cached", "frozen")
    assert fast.words == "learned-7" and get("t3/nyu/learned-7").train.mode == "faithful"
    with pytest.raises(TypeError, match="cannot change"):
        variant("t3/nyu/learned-7", name="other")
    with pytest.raises(TypeError, match="cannot change"):
        variant("t3/nyu/learned-7", dataset="kitti")
    with pytest.raises(ValueError, match="mode"):
        variant("t3/nyu/learned-7", mode="fast")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_bins": 20}, "n_bins"),
        ({"words": "learned-0"}, "word set"),
        ({"template": "2o2d"}, "template"),
        ({"bins": "linear"}, "bin kind"),
        ({"min_depth": 20.0}, "min_depth"),
        ({"words": "depth-7", "trained": True}, "nothing to learn"),
        ({"text_norm": "l2"}, "text_norm"),
    ],
)
def test_invalid_experiments_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(get("t3/nyu/learned-7"), **changes)


def test_get_unknown_name_suggests_close_names() -> None:
    with pytest.raises(KeyError) as info:
        get("t3/nyu/lerned-7")
    assert "t3/nyu/learned-7" in str(info.value)
    with pytest.raises(ValueError):
        get("t4/nyu/4o4")
    assert isinstance(info.value, UnknownExperimentError)


def test_select() -> None:
    assert [e.name for e in select(table=3)] == EXPECTED_NAMES[:12]
    assert select(table="t3") == select(table="Table 3") == select(table="3")
    assert [e.name for e in select(table="t7", dataset="kitti")] == [f"t7/kitti/{r}" for r in _T7]
    assert {e.name for e in select(pattern="*/nyu/learned-*")} == {
        "t3/nyu/learned-7",
        *(f"t6/nyu/{r}" for r in _T6),
        *(f"t7/nyu/{r}" for r in _T7),
    }
    assert [e.name for e in select(pattern="zero")] == ["depthclip/nyu/zero-shot"]
    assert len(select(dataset="kitti")) == 20 and len(select(dataset="nyu")) == 21
    with pytest.raises(ValueError, match="unknown table"):
        select(table="t9")
    with pytest.raises(ValueError, match="unknown dataset"):
        select(dataset="sunrgbd")


# ---- profiles ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_profiles_never_change_the_method(name: str) -> None:
    demo, paper = resolve(name, "demo"), resolve(name, "paper")
    assert demo.experiment == paper.experiment == get(name)
    assert method_fields(demo.experiment) == method_fields(paper.experiment)
    for f in dataclasses.fields(Experiment):
        assert getattr(demo, f.name) == getattr(paper, f.name)  # read through to the experiment
    assert demo.config_hash == paper.config_hash == config_hash(get(name))
    assert demo.run_key != paper.run_key
    for resolved in (demo, paper):
        for size in (resolved.train_size, resolved.test_size):
            assert size[0] % 32 == 0 and size[1] % 32 == 0


def test_profile_run_settings() -> None:
    demo, paper = resolve("t3/nyu/learned-7", "demo"), resolve("t3/nyu/learned-7", "paper")
    assert demo.weights is None and paper.weights == "openai"
    assert demo.epochs == 3 and paper.epochs == 25
    assert demo.synthetic == "indoor" and paper.synthetic is None
    assert demo.banner and "not comparable" in demo.banner and paper.banner is None
    assert (paper.train_size, paper.test_size) == ((416, 544), (480, 640))
    kitti = resolve("t3/kitti/learned-7", "paper")
    assert (kitti.train_size, kitti.test_size) == ((352, 704), (352, 1216))
    assert kitti.depth_root is not None
    assert resolve("t3/kitti/learned-7", "demo").synthetic == "outdoor"
    # untrained rows never train, whatever the profile
    assert resolve("t3/nyu/random-7", "paper").epochs == 0
    assert resolve("t3/nyu/random-7", "demo", epochs=5).epochs == 0


def test_resolve_overrides_and_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPDEPTH_DATA_DIR", "/datasets")
    r = resolve("t6/nyu/learned-20-log", "paper", epochs=1, weights="/w/rn50.pt", test_size=(224, 288))
    assert r.data_root == "/datasets/nyu"
    assert (r.epochs, r.weights, r.test_size) == (1, "/w/rn50.pt", (224, 288))
    assert r.experiment is get("t6/nyu/learned-20-log")
    r2 = resolve("t6/nyu/learned-20-log", PROFILES["demo"], data_root="/tmp/scenes")
    assert r2.data_root == "/tmp/scenes" and r2.synthetic == "indoor"
    with pytest.raises(TypeError, match="variant"):
        resolve("t3/nyu/learned-7", "demo", words="depth-7")
    with pytest.raises(TypeError, match="cannot override"):
        resolve("t3/nyu/learned-7", "demo", lr=1.0)
    with pytest.raises(ValueError, match="multiples of 32"):
        resolve("t3/nyu/learned-7", "demo", train_size=(100, 160))
    with pytest.raises(ValueError, match="unknown profile"):
        resolve("t3/nyu/learned-7", "fast")
    with pytest.raises(ValueError, match="multiples of 32"):
        DatasetSetup("x", (128, 150), (160, 224))


def test_resolved_to_dict_is_json() -> None:
    record = resolve("t5/nyu/4o4d+learned-7", "demo").to_dict()
    text = json.dumps(record)
    assert record["experiment"]["name"] == "t5/nyu/4o4d+learned-7"
    assert record["config_hash"] == config_hash(get("t5/nyu/4o4d+learned-7"))
    assert "run_key" in json.loads(text)


# ---- describe and the console -------------------------------------------------------------


def test_describe() -> None:
    text = describe("t6/nyu/learned-7-even")
    assert "paper Table 6" in text and "7, Linear" in text
    assert "same as   : t3/nyu/learned-7, t5/nyu/baseline+learned-7" in text
    assert "abs_rel 0.319" in text and config_hash(get("t3/nyu/learned-7")) in text
    assert "per_prompt" in describe("depthclip/nyu/zero-shot")
    assert "seed 42" in describe("t3/kitti/random-7")


def _console(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="clipdepth")
    experiments_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_console_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert _console(["experiments", "list", "--table", "t4", "--dataset", "kitti"]) == 0
    out = capsys.readouterr().out
    for row in _T4:
        assert f"t4/kitti/{row}" in out
    assert "t4/nyu/" not in out and "t3/" not in out
    assert "4 experiments" in out and "0.331" in out  # paper abs_rel of 1o1d
    assert _console(["experiments", "list", "--table", "t12"]) == 2


def test_console_describe(capsys: pytest.CaptureFixture[str]) -> None:
    assert _console(["experiments", "describe", "t7/kitti/learned-256-log"]) == 0
    assert "d1 0.652" in capsys.readouterr().out
    assert _console(["experiments", "describe", "t7/kitti/learned-265-log"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_dispatcher_registers_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    from clipdepth.run import cli

    assert cli.main(["experiments", "list", "--pattern", "depthclip"]) == 0
    assert "depthclip/nyu/zero-shot" in capsys.readouterr().out


# ---- the registry as data (reference/registry.csv) ------------------------------------------------

# config_hash of every row as computed by the code-built registry before the table existed (commit
# 7f60ffd): reading the rows from the CSV, and the learned_object / token_init fields at their
# defaults, must leave every run key as it was.
RECORDED_HASHES = {
    "t3/nyu/colour-7": "15b405582e6dd3369815d4d0539465013de16e2643a70bfbb4c741040a85ee45",
    "t3/nyu/size-7": "41220be1db98916c76a14777b0365433e6bd2b45db5c5b06068c32f58ab70926",
    "t3/nyu/depth-7": "b533566b67de17f6b7bf28b9ab9984ef4e03bbc6d5f175b2429e2f31d3350fcb",
    "t3/nyu/random-7": "1ecd62a59c26169c15f109aa15e349a1db90dbd148154da80920e7a7431b0b63",
    "t3/nyu/rand-txt-7": "160423800ff7ca7c1e30a71ec87cb84b8870ca86a81121ed184cce2970c3380d",
    "t3/nyu/learned-7": "97f43b6ecae441ed92f168b098f77ef573f54af7d452afa9dc8126ee383aecfa",
    "t3/kitti/colour-7": "2b2759ea2c496dcde32e77978f2bfec2605cd9f927e4305936c0541707166260",
    "t3/kitti/size-7": "0d9aa60002f337f3bb62fad74c9855c3ea1e2574fa76ee7dc052bbbc5ac9bb10",
    "t3/kitti/depth-7": "2881841f0151df250bc19b33297974d33daedf3af2c555c9824954524e686455",
    "t3/kitti/random-7": "f2d5e7c92aac18b07938e6b05662ec216a9521ae9e7ead18193bbce849d14eb1",
    "t3/kitti/rand-txt-7": "975b390a3458446a340123fda92bbe7c9b7553ea6b71e8a4438d3d6bde180b15",
    "t3/kitti/learned-7": "9f0b4d7d99600aa910480eb9bc40bc8a9b10e4558b667f219ad181e54f5afad2",
    "t4/nyu/baseline": "b533566b67de17f6b7bf28b9ab9984ef4e03bbc6d5f175b2429e2f31d3350fcb",
    "t4/nyu/1o1d": "4d466b402f3d54ad00e8730e6f70a4e9937d02ecb697abe2cfb25e874d45cb53",
    "t4/nyu/1o2d": "1a0e041da02b43b9c7c2353f35521630e094c4ada74cf79c7f4d59591f152ae7",
    "t4/nyu/4o4d": "ac6797779fc2af582ad9bd29e22eb741bca083fb32e1aad16ef0289e38e89994",
    "t4/kitti/baseline": "2881841f0151df250bc19b33297974d33daedf3af2c555c9824954524e686455",
    "t4/kitti/1o1d": "81869dc3f52bd90d34496b4f3b5311b58e2a0df2294f5da5bcfe4f1ca35dd6bb",
    "t4/kitti/1o2d": "0c68bb45304abb9cb4d05429ac076d1f9dbef1a79f617e65383009d7c7fc9949",
    "t4/kitti/4o4d": "39f535fbb2f3b57d68fb855509a0467f4c6ada6d8b4f8e79e1a9fb77bbb1d28c",
    "t5/nyu/baseline+learned-7": "97f43b6ecae441ed92f168b098f77ef573f54af7d452afa9dc8126ee383aecfa",
    "t5/nyu/4o4d+depth-7": "ac6797779fc2af582ad9bd29e22eb741bca083fb32e1aad16ef0289e38e89994",
    "t5/nyu/4o4d+learned-7": "7e51c3cf5799b3fe2ced48d4a8b43f1add7de44cf49ca54b933b7949a7123646",
    "t5/kitti/baseline+learned-7": "9f0b4d7d99600aa910480eb9bc40bc8a9b10e4558b667f219ad181e54f5afad2",
    "t5/kitti/4o4d+depth-7": "39f535fbb2f3b57d68fb855509a0467f4c6ada6d8b4f8e79e1a9fb77bbb1d28c",
    "t5/kitti/4o4d+learned-7": "00037db97cc7a05bf7c0ba65698f298aaae6ae110618331e894e3f71be775e27",
    "t6/nyu/learned-7-even": "97f43b6ecae441ed92f168b098f77ef573f54af7d452afa9dc8126ee383aecfa",
    "t6/nyu/learned-7-log": "3fe8cea5a6ce0e2d4f5973655051312de9c8c1eeca17f7ed86ec4399b2cb9e15",
    "t6/nyu/learned-20-even": "1831104fab2476b1b0d40c09dcc325be16a57ff1f64d3f4b95a646303c5ffb81",
    "t6/nyu/learned-20-log": "e64eb296bd5e217ef596ceda48eb5e80a044f362211331b7dcb133df634c3ac4",
    "t6/kitti/learned-7-even": "9f0b4d7d99600aa910480eb9bc40bc8a9b10e4558b667f219ad181e54f5afad2",
    "t6/kitti/learned-7-log": "e7e078aef6d02781e2d2c8c7c028e71c5b8293ab74796c703cfa616683454d29",
    "t6/kitti/learned-20-even": "fee1d3a6512a4417d2e1bda6acc49fb8115aea150090bea97dd61dcd61abdde7",
    "t6/kitti/learned-20-log": "036034a98a1a841c7b5444ad93c5cb5d4329d8e3ce297d0dc99ad55e95fd7409",
    "t7/nyu/learned-7-log": "3fe8cea5a6ce0e2d4f5973655051312de9c8c1eeca17f7ed86ec4399b2cb9e15",
    "t7/nyu/learned-20-log": "e64eb296bd5e217ef596ceda48eb5e80a044f362211331b7dcb133df634c3ac4",
    "t7/nyu/learned-256-log": "5f5ec20ee555038b01d1d9de2b0afa8cd09a0700533f11b54867d1609791b827",
    "t7/kitti/learned-7-log": "e7e078aef6d02781e2d2c8c7c028e71c5b8293ab74796c703cfa616683454d29",
    "t7/kitti/learned-20-log": "036034a98a1a841c7b5444ad93c5cb5d4329d8e3ce297d0dc99ad55e95fd7409",
    "t7/kitti/learned-256-log": "96cff40ce7f6884eeeb58065fd29c38256c5d639bb09b9e94efbe048f076a1d6",
    "depthclip/nyu/zero-shot": "9d7dfcf7d04458719a5505af365cb153bcb4fd96ad11ed1bedb1c12d65606912",
}


def test_registry_table_keeps_every_hash() -> None:
    assert {name: config_hash(exp) for name, exp in EXPERIMENTS.items()} == RECORDED_HASHES


def test_registry_table_is_the_registry() -> None:
    experiments, configs = ex.load_registry()
    assert experiments == EXPERIMENTS and list(configs) == list(EXPERIMENTS)
    assert ex.authors_config("t3/nyu/learned-7") == "params/depthclip_nyu_rn50_pv1_ls7_p_dset-even-7.yaml"
    assert ex.authors_config("t3/kitti/colour-7") == "none released"
    text = describe("t6/kitti/learned-20-log")
    assert "authors'  : params/depthclip_kitti_rn50_pv1_ls20_p_const80-log-20.yaml" in text
    assert "stored copy" in describe("t4/nyu/1o1d")  # a cited file we could not read says so


_HEADER = ",".join(ex.REGISTRY_COLUMNS)
_GOOD = "t3/nyu/depth-7,t3,nyu,depth-7,depth-7,baseline,even,7,no,frobenius,auty2023,none released,"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (_GOOD.replace(",no,", ",maybe,"), "line 2: trained must be 'yes' or 'no', got 'maybe'"),
        (_GOOD.replace("t3/nyu/depth-7", "t3/kitti/depth-7", 1),
         "line 2: name 't3/kitti/depth-7' must be t3/nyu/<row>"),
        (_GOOD.replace(",7,no", ",8,no"), "line 2: t3/nyu/depth-7: word set 'depth-7' has 7 words but n_bins=8"),
        (_GOOD.replace("none released", "params/x.json"), "line 2: authors_config must be params/<file>.yaml"),
        (_GOOD + "\n" + _GOOD, "line 3: duplicate name 't3/nyu/depth-7'"),
        (_GOOD.rsplit(",", 3)[0], "line 2: expected 13 fields"),
    ],
)
def test_registry_table_bad_lines(tmp_path, line: str, message: str) -> None:
    path = tmp_path / "registry.csv"
    path.write_text(f"{_HEADER}\n{line}\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        ex.load_registry(path)
    assert str(info.value).startswith(str(path)) and message in str(info.value)
    assert "\n" not in str(info.value)
    path.write_text("name,table\n", encoding="utf-8")
    with pytest.raises(ValueError, match="header must be"):
        ex.load_registry(path)


def test_registry_table_is_package_data() -> None:
    from importlib import resources

    assert resources.files("clipdepth").joinpath("study", "reference", "registry.csv").is_file()
    import tomllib
    from fnmatch import fnmatch

    with open("pyproject.toml", "rb") as f:
        globs = tomllib.load(f)["tool"]["setuptools"]["package-data"]["clipdepth"]
    assert any(fnmatch("study/reference/registry.csv", g) for g in globs)


def test_new_fields_enter_the_hash_only_when_set() -> None:
    exp = get("t3/nyu/learned-7")
    assert "learned_object" not in method_fields(exp) and "token_init" not in method_fields(exp)["train"]
    assert method_fields(variant(exp, learned_object=True))["learned_object"] is True
    assert method_fields(variant(exp, token_init="authors"))["train"]["token_init"] == "authors"
    random7 = variant("t3/nyu/random-7", token_init="authors")
    assert method_fields(random7)["train"] == {"seed": 42, "token_init": "authors"}
