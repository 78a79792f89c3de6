"""Suites become RunSpecs: grid expansion, defaults, overrides and stable run ids."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

import qatbench
from qatbench.config import QuantSpec, RunSpec, parse_bits
from qatbench.config.suite import apply_override, split_key_path
from qatbench.errors import UserError
from tests.conftest import ROOT, write_suite


def _spec(**changes) -> RunSpec:
    fields = dict(
        method="lsq",
        dataset="RotatedMNIST",
        test_envs=(0,),
        model="small_cnn",
        seed=0,
        steps=10,
        batch_size=32,
        eval_every=5,
        data_seed=0,
        holdout_fraction=0.2,
        hparams={"lr": 0.01},
        quant=QuantSpec(4, 4),
    )
    fields.update(changes)
    return RunSpec(**fields)


def test_run_id_is_the_hash_of_the_semantic_fields_and_pinned():
    # If this changes, every existing results folder is orphaned: change it only on purpose.
    canonical = (
        '{"batch_size":32,"data_seed":0,"dataset":"RotatedMNIST","dataset_options":{},"eval_every":5,'
        '"holdout_fraction":0.2,"hparams":{"lr":0.01},"method":"lsq","model":"small_cnn","model_options":{},'
        '"parent":null,"quant":{"a_bits":4,"first_last":"8bit","quantizer":"lsq","w_bits":4,"w_per_channel":false},'
        '"seed":0,"steps":10,"test_envs":[0]}'
    )
    assert _spec().run_id == hashlib.sha256(canonical.encode()).hexdigest()[:16] == "3fcbc6e8154c83eb"


def test_run_id_ignores_names_devices_and_eval_batch_size():
    base = _spec()
    assert _spec(suite="other", label="my-lsq", eval_batch_size=7).run_id == base.run_id


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 1},
        {"steps": 11},
        {"hparams": {"lr": 0.02}},
        {"quant": QuantSpec(3, 3)},
        {"holdout_fraction": 0.3},
        {"dataset_options": {"size": 64}},
        {"model_options": {"width": 8}},
        {"batch_size": 16},
        {"eval_every": 6},
        {"model": "resnet20"},
        {"dataset": "ColoredMNIST"},
        {"quant": QuantSpec(4, 4, w_per_channel=True)},
        {"quant": QuantSpec(4, 4, first_last="fp")},
        {"test_envs": (5,)},
        {"data_seed": 1},
        {"method": "erm"},
        {"parent": _spec(method="erm", quant=None)},
    ],
)
def test_run_id_changes_with_every_semantic_field(change):
    assert _spec(**change).run_id != _spec().run_id


def test_run_id_is_the_same_in_a_fresh_interpreter():
    code = (
        "from qatbench.config import RunSpec, QuantSpec; print(RunSpec(method='lsq', dataset='RotatedMNIST', "
        "test_envs=(0,), model='small_cnn', seed=0, steps=10, batch_size=32, eval_every=5, data_seed=0, "
        "holdout_fraction=0.2, hparams={'lr': 0.01}, quant=QuantSpec(4, 4)).run_id)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == _spec().run_id


def test_quickstart_expands_to_erm_and_lsq_over_two_test_domains_and_three_seeds():
    suite = qatbench.load_suite(ROOT / "suites" / "quickstart.yaml")
    specs = qatbench.expand(suite)
    assert len(specs) == 12
    assert sorted({(s.method, s.bits_label) for s in specs}) == [("erm", "FP"), ("lsq", "W4A4")]
    assert sorted({s.test_envs for s in specs}) == [(0,), (5,)]
    # parents first, and every lsq run's parent is the erm run of the same domain and seed
    erm_ids = {(s.test_envs, s.seed): s.run_id for s in specs if s.method == "erm"}
    lsq = [s for s in specs if s.method == "lsq"]
    assert specs.index(lsq[0]) >= 6
    assert all(s.parent.run_id == erm_ids[(s.test_envs, s.seed)] for s in lsq)


def test_method_hparams_are_filled_with_paper_defaults(tmp_path):
    suite = qatbench.load_suite(ROOT / "suites" / "quickstart.yaml", ["seeds=[0]", "datasets[0].test_envs=[0]"])
    specs = {s.method: s for s in qatbench.expand(suite)}
    assert dict(specs["lsq"].hparams) == {
        "optimizer": "sgd",
        "lr": None,
        "weight_decay": None,
        "momentum": 0.9,
        "schedule": "cosine",
    }
    assert specs["erm"].hparams["lr"] == 0.001  # the suite's value beats DomainBed's 5e-5


def test_set_overrides_reach_nested_fields_and_shorthand_entries():
    suite = qatbench.load_suite(
        ROOT / "suites" / "quickstart.yaml",
        ["training.steps=7", "methods[1].hparams.lr=0.5", "bits=[w2a2, W3A3]", "seeds=[4]"],
    )
    assert suite.training.steps == 7
    assert suite.methods[1].hparams == {"lr": 0.5}
    assert suite.bits == ["W2A2", "W3A3"]
    specs = qatbench.expand(suite)
    assert {s.quant.label for s in specs if s.quant} == {"W2A2", "W3A3"}
    assert {s.seed for s in specs} == {4}


def test_override_turns_a_name_shorthand_into_an_entry():
    raw = {"methods": ["erm", "lsq"]}
    assert apply_override(raw, "methods.1.hparams.lr=1e-3") == "methods[1].hparams.lr"
    assert raw["methods"][1] == {"name": "lsq", "hparams": {"lr": "1e-3"}}  # YAML 1.1 reads 1e-3 as text
    assert split_key_path("a[2].b") == ["a", 2, "b"]


def test_test_envs_accept_names_lists_and_all(tmp_path):
    path = write_suite(
        tmp_path,
        """
        datasets:
          - {name: RotatedMNIST, test_envs: ["75", [0, "15"]]}
          - {name: ColoredMNIST}
        models: [small_cnn]
        methods: [erm]
    """,
    )
    specs = qatbench.expand(qatbench.load_suite(path))
    assert [s.test_envs for s in specs] == [(5,), (0, 1), (0,), (1,), (2,)]


def test_data_seed_defaults_to_the_run_seed_and_can_be_fixed(tmp_path):
    path = write_suite(
        tmp_path,
        """
        datasets: [{name: RotatedMNIST, test_envs: [0]}]
        models: [small_cnn]
        methods: [erm]
        seeds: [3, 4]
    """,
    )
    assert [s.data_seed for s in qatbench.expand(qatbench.load_suite(path))] == [3, 4]
    fixed = qatbench.load_suite(path, ["datasets[0].data_seed=9"])
    assert [s.data_seed for s in qatbench.expand(fixed)] == [9, 9]


def test_fp_methods_ignore_bits_and_qat_methods_get_one_run_per_bit_width(tmp_path):
    path = write_suite(
        tmp_path,
        """
        datasets: [{name: RotatedMNIST, test_envs: [0]}]
        models: [small_cnn]
        methods: [erm, lsq]
        bits: [W4A4, W2A2]
    """,
    )
    specs = qatbench.expand(qatbench.load_suite(path))
    assert sorted(s.bits_label for s in specs) == ["FP", "W2A2", "W4A4"]


def test_an_entry_s_own_bits_replace_the_suite_s_for_that_entry_only(tmp_path):
    path = write_suite(
        tmp_path,
        """
        datasets: [{name: RotatedMNIST, test_envs: [0]}]
        models: [small_cnn]
        methods: [erm, lsq, {name: lsq, label: lsq_low, bits: [W3A3, W2A2]}, {name: ptq, bits: W8A8}]
        bits: [W4A4]
    """,
    )
    specs = qatbench.expand(qatbench.load_suite(path))
    assert sorted((s.label, s.bits_label) for s in specs) == [
        ("erm", "FP"), ("lsq", "W4A4"), ("lsq_low", "W2A2"), ("lsq_low", "W3A3"), ("ptq", "W8A8")
    ]  # fmt: skip
    plain = {s.bits_label: s.run_id for s in qatbench.expand(qatbench.load_suite(path, ["bits=[W4A4, W3A3]"]))}
    low = {s.bits_label: s.run_id for s in specs if s.label == "lsq_low"}
    assert low["W3A3"] == plain["W3A3"]  # the same run whichever way its bits were asked for


def test_a_lsq_only_suite_still_trains_its_fp_parent(tmp_path):
    path = write_suite(
        tmp_path,
        """
        datasets: [{name: RotatedMNIST, test_envs: [0]}]
        models: [small_cnn]
        methods: [lsq]
    """,
    )
    specs = qatbench.expand(qatbench.load_suite(path))
    assert [s.method for s in specs] == ["erm", "lsq"]
    assert specs[1].parent.run_id == specs[0].run_id


def test_quant_spec_refuses_bits_outside_two_to_eight():
    with pytest.raises(ValueError, match="w_bits"):
        QuantSpec(1, 4)
    assert parse_bits("w3a8") == (3, 8)
    with pytest.raises(UserError):
        qatbench.load_suite(ROOT / "suites" / "quickstart.yaml", ["bits=[W4A9]"])


def test_options_left_at_their_default_and_written_out_give_the_same_run(tmp_path):
    implicit = qatbench.expand(qatbench.load_suite(ROOT / "suites" / "quickstart.yaml"))
    explicit = qatbench.expand(qatbench.load_suite(ROOT / "suites" / "quickstart.yaml", ["models[0].options.width=16"]))
    assert [s.run_id for s in implicit] == [s.run_id for s in explicit]
    assert dict(implicit[0].model_options) == {"width": 16, "freeze_bn": False}  # every model takes freeze_bn


def test_a_pretrained_file_enters_the_run_id_by_its_name_not_its_folder():
    here = _spec(model="resnet18", model_options={"pretrained": "/data/a/resnet18-f37072fd.pth"})
    moved = _spec(model="resnet18", model_options={"pretrained": "/mnt/b/resnet18-f37072fd.pth"})
    other = _spec(model="resnet18", model_options={"pretrained": "/data/a/my-finetuned.pth"})
    assert here.run_id == moved.run_id != other.run_id


@pytest.mark.parametrize("parent", ["parent: erm", ""])
def test_parent_erm_means_the_suites_own_erm_entry(tmp_path, parent):
    path = write_suite(
        tmp_path,
        f"""
        datasets: [{{name: RotatedMNIST, test_envs: [0]}}]
        models: [small_cnn]
        methods: [{{name: erm, hparams: {{lr: 0.001}}}}, lsq]
        {parent}
    """,
    )
    specs = qatbench.expand(qatbench.load_suite(path))
    assert [s.method for s in specs] == ["erm", "lsq"]
    assert specs[1].parent.run_id == specs[0].run_id


def test_a_parent_with_its_own_hparams_is_a_separate_fp_run(tmp_path):
    path = write_suite(
        tmp_path,
        """
        datasets: [{name: RotatedMNIST, test_envs: [0]}]
        models: [small_cnn]
        methods: [erm, lsq]
        parent: {name: erm, hparams: {lr: 0.01}}
    """,
    )
    specs = qatbench.expand(qatbench.load_suite(path))
    lsq = next(s for s in specs if s.method == "lsq")
    fp_lrs = sorted(s.hparams["lr"] for s in specs if s.method == "erm")
    assert len(specs) == 3 and lsq.parent.hparams["lr"] == 0.01 and fp_lrs == [5e-5, 0.01]


def test_every_committed_record_is_a_run_of_its_suite_as_the_suite_reads_now():
    """A change that moves run ids (a new option entering them at its default, say) would orphan the
    committed leaderboard: every record under results/<suite>/ must be a run its suite expands to."""
    from qatbench.runner import api

    listed = subprocess.run(["git", "ls-files", "results/*/*/record.json"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: no committed records to check")
    by_suite: dict[str, list[str]] = {}
    for path in listed.stdout.split():
        by_suite.setdefault(path.split("/")[1], []).append(path)
    for suite, paths in by_suite.items():
        assert (ROOT / "suites" / f"{suite}.yaml").exists(), f"results/{suite}/ has committed records but no suite file"
        specs = api.expand(api.load_suite(ROOT / "suites" / f"{suite}.yaml"))
        ids = {s.run_id for s in specs} | {s.parent.run_id for s in specs if s.parent}
        orphans = [p for p in paths if json.loads((ROOT / p).read_text())["run_id"] not in ids]
        assert not orphans, f"{suite}: {len(orphans)} of {len(paths)} committed records are no run of the suite"
    assert sum(map(len, by_suite.values())) >= 100  # the committed leaderboards' records
