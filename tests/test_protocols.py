"""Protocols (config/protocol.py): where quantization starts. A `switch_at` run is its FP run until
the switch, then quantizes the weights it has with step sizes calibrated on them; `from_pretrained`
has no parent; the default keeps the ids of runs finished before protocols existed; a protocol a
method cannot train under is one line and exit 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from qatbench.config import RunSpec
from qatbench.config.protocol import Protocol
from qatbench.methods import METHODS
from qatbench.models import build_model
from qatbench.quant import QuantConv2d, QuantLinear, step_parameters
from qatbench.runner import api, protocols, store
from qatbench.runner.sweep import plan
from tests.conftest import ROOT, run_cli, write_suite
from tests.test_config import _spec as config_spec

SUITE = """\
name: proto
datasets: [{name: RotatedMNIST, test_envs: [0]}]
models: [{name: small_cnn, options: {width: 4}}]
methods:
  - {name: erm, hparams: {lr: 0.01}}
  - {name: lsq, protocol: {switch_at: 3}}
bits: [W4A4]
seeds: [0]
training: {steps: 6, batch_size: 8, eval_every: 3, eval_batch_size: 1024, checkpoint_every: 0}
"""


def _curve(results: Path, record: dict) -> list[dict]:
    return [json.loads(line) for line in (results / "proto" / record["run_id"] / store.CURVE).read_text().splitlines()]


def test_switch_at_run_is_its_fp_run_until_the_switch_then_trains_quantized(tmp_path):
    results = tmp_path / "results"
    suite = api.load_suite(write_suite(tmp_path, SUITE))
    records = {r["label"]: r for r in api.run(suite, results, progress=False).records}
    assert {r["status"] for r in records.values()} == {"done"}, records
    erm, switched = records["erm"], records["lsq"]
    erm_curve, switch_curve = _curve(results, erm), _curve(results, switched)
    assert [row["step"] for row in switch_curve] == [3, 6]
    assert switch_curve[0] == erm_curve[0]  # loss and every accuracy at step 3, bit for bit
    assert switch_curve[1]["loss"] != erm_curve[1]["loss"]
    assert switched["protocol"] == "switch_at:3" and switched["switched_at_step"] == 3
    assert switched["parent_run_id"] is None
    weights = torch.load(results / "proto" / switched["run_id"] / store.MODEL, weights_only=True)
    assert any(key.endswith("w_quant.step") for key in weights)
    assert sorted(r["steps"] for r in records.values()) == [6, 6]  # no FP parent of 0 steps, no second FP run


def test_from_pretrained_quantizes_the_model_as_built_with_no_parent_run(tmp_path):
    text = SUITE.replace("protocol: {switch_at: 3}", "protocol: from_pretrained")
    specs = api.expand(api.load_suite(write_suite(tmp_path, text)))
    quantized = [s for s in specs if s.quant is not None]
    assert len(quantized) == 1 and quantized[0].parent is None
    assert quantized[0].semantic()["protocol"] == {"name": "from_pretrained"}
    assert [s.method for s in plan(specs)] == ["erm", "lsq"]  # no parent run added


def _spec(switch_at: int) -> RunSpec:
    fp = {"optimizer": "adam", "lr": 5e-5, "weight_decay": 0.0, "momentum": 0.9, "schedule": "constant"}
    return config_spec(protocol=Protocol("switch_at", switch_at, fp_method="erm", fp_hparams=fp))


def test_switch_calibrates_step_sizes_on_the_weights_it_has_and_gives_them_a_fresh_optimizer():
    torch.manual_seed(0)
    spec = _spec(switch_at=3)
    model = build_model("small_cnn", (1, 28, 28), 10, {"width": 4})
    float_run = protocols.float_method(spec, model, 10)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for _ in range(3):
        float_run.update([(x, y)])
    weights_at_switch = {name: p.detach().clone() for name, p in model.named_parameters() if name.endswith("weight")}
    method = protocols.switch(float_run, spec, 10, [x], compiled=False)

    layers = {n: m for n, m in method.model.named_modules() if isinstance(m, QuantConv2d | QuantLinear)}
    assert layers
    for name, layer in layers.items():
        q_p = 2 ** (layer.w_quant.bits - 1) - 1  # signed weights: 7 at 4 bits, 127 for the 8-bit edges
        expected = 2 * weights_at_switch[f"{name}.weight"].abs().mean() / math.sqrt(q_p)  # LSQ's init
        assert torch.allclose(layer.w_quant.step, expected), name
        assert layer.a_quant.initialized
    in_optimizer = {id(p) for group in method.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in step_parameters(method.model)} <= in_optimizer
    assert {id(p) for p in method.model.parameters()} <= in_optimizer
    assert not method.optimizer.state  # fresh: no momentum carried over from the float steps
    assert method.total_steps == spec.steps - 3  # the cosine schedule spans the quantized steps
    assert not any(isinstance(m, QuantConv2d) for m in float_run.model.modules())  # float model untouched


def test_default_protocol_keeps_the_ids_of_committed_runs():
    suite = api.load_suite(ROOT / "suites" / "rotmnist_zoo.yaml")
    finished = {p.name for p in (ROOT / "results" / "rotmnist_zoo").iterdir() if p.is_dir()}
    specs = api.expand(suite)
    quantized = [s for s in specs if s.quant is not None]
    assert quantized and all("protocol" not in s.semantic() for s in specs)
    assert {s.run_id for s in quantized} & finished == {s.run_id for s in quantized}


def test_protocols_enter_the_run_id_with_the_float_method_of_a_switch():
    ids = {_spec(3).run_id, _spec(4).run_id, RunSpec(**{**_spec(3).__getstate__(), "protocol": Protocol()}).run_id}
    assert len(ids) == 3
    other_fp = _spec(3).__getstate__()
    other_fp["protocol"] = Protocol("switch_at", 3, fp_method="erm", fp_hparams={"lr": 1e-3})
    assert RunSpec(**other_fp).run_id != _spec(3).run_id


def test_methods_say_which_protocols_they_train_under():
    assert METHODS.get("lsq").protocols() == ("from_fp_run", "from_pretrained", "switch_at")
    assert METHODS.get("kd").protocols() == ("from_fp_run",)  # its teacher is the FP run
    assert METHODS.get("ptq").protocols() == ("from_fp_run",)
    assert METHODS.get("erm").protocols() == ()


BAD = """\
name: bad
datasets: [{{name: RotatedMNIST, test_envs: [0]}}]
models: [{{name: small_cnn}}]
methods: [{methods}]
{extra}training: {{steps: 10}}
"""


@pytest.mark.parametrize(
    "methods, extra, message",
    [
        ("{name: erm, protocol: from_pretrained}", "", "methods[0].protocol: method 'erm' trains in full precision"),
        ("erm, {name: sagm, protocol: {switch_at: 5}}", "", "its only `protocol` is 'from_fp_run'"),
        ("erm, {name: kd, protocol: {switch_at: 5}}", "", "methods[1].protocol: method 'kd' (methods[1]) trains"),
        ("erm, kd", "protocol: from_pretrained\n", "protocol: method 'kd' (methods[1]) trains under the protocols"),
        ("erm, {name: lsq, protocol: {switch_at: 10}}", "", "switch_at 10 leaves no quantized steps"),
        ("erm, {name: lsq, protocol: {switch_at: 0}}", "", "protocol must be 'from_fp_run', 'from_pretrained' or"),
        ("erm, {name: lsq, protocol: at_step_5}", "", "protocol must be 'from_fp_run'"),
        ("erm, {name: ptq, protocol: from_pretrained}", "", "method 'ptq' (methods[1]) trains under the protocols"),
    ],
)
def test_a_protocol_a_method_cannot_use_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, methods, extra, message):
    from qatbench.cli import main

    suite = write_suite(tmp_path, BAD.format(methods=methods, extra=extra))
    results = tmp_path / "results"
    assert main(["run", str(suite), "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(suite) in err, err
    assert not results.exists()


def test_a_protocol_on_a_full_precision_method_fails_in_a_fresh_cli_process(tmp_path):
    suite = write_suite(tmp_path, BAD.format(methods="{name: erm, protocol: {switch_at: 5}}", extra=""))
    results = tmp_path / "results"
    done = run_cli("run", str(suite), "--results", str(results))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"qatbench: error: {suite}: methods[0].protocol: method 'erm' trains in full precision, from the model "
        "as built; its only `protocol` is 'from_fp_run' (train on from the finished parent run), got {'switch_at': 5}"
    ]
    assert not results.exists()


CONTINUED = SUITE.replace(
    "  - {name: lsq, protocol: {switch_at: 3}}",
    "  - {name: lsq}\n  - {name: erm, label: erm_continued, protocol: from_fp_run, hparams: {optimizer: sgd, lr: 0.001}}",
)


def test_a_full_precision_entry_with_from_fp_run_trains_on_from_the_finished_parent(tmp_path):
    """The control of the quantized cells' extra training: the erm run's final weights, trained on in
    full precision with the entry's own optimiser, a run of its own next to the parent."""
    results = tmp_path / "results"
    records = {r["label"]: r for r in api.run(api.load_suite(write_suite(tmp_path, CONTINUED)), results, progress=False).records}
    assert {r["status"] for r in records.values()} == {"done"}, records
    erm, continued, lsq = records["erm"], records["erm_continued"], records["lsq"]
    assert continued["parent_run_id"] == lsq["parent_run_id"] == erm["run_id"] and erm["parent_run_id"] is None
    assert continued["bits"] == "FP" and continued["effective_hparams.optimizer"] == "sgd"
    parent = torch.load(results / "proto" / erm["run_id"] / store.MODEL, weights_only=True)
    start = build_model("small_cnn", (1, 28, 28), 10, {"width": 4})
    start.load_state_dict(parent)
    trained = torch.load(results / "proto" / continued["run_id"] / store.MODEL, weights_only=True)
    torch.manual_seed(0)  # the init the parent run started from (its seed)
    init = dict(build_model("small_cnn", (1, 28, 28), 10, {"width": 4}).named_parameters())
    from_parent = max((trained[k] - v).abs().max().item() for k, v in start.named_parameters())
    from_init = max((trained[k] - v).abs().max().item() for k, v in init.items())
    # SGD lr 0.001 for 6 steps moves the parent's weights a little; the parent's Adam lr 0.01 moved its init more
    assert 0 < from_parent < from_init / 10, (from_parent, from_init)


def test_the_parent_is_the_plain_entry_whatever_the_order_and_never_fine_tunes_itself(tmp_path):
    text = CONTINUED.replace("  - {name: erm, hparams: {lr: 0.01}}\n", "") + "parent: {name: erm, hparams: {lr: 0.01}}\n"
    specs = {s.label: s for s in api.expand(api.load_suite(write_suite(tmp_path, text)))}
    assert specs["erm_continued"].parent.run_id == specs["lsq"].parent.run_id
    assert specs["erm_continued"].parent.hparams["lr"] == 0.01 and specs["erm_continued"].parent.parent is None
    first = CONTINUED.replace(
        "  - {name: erm, hparams: {lr: 0.01}}\n", ""
    ).replace("  - {name: lsq}\n", "  - {name: lsq}\n  - {name: erm, hparams: {lr: 0.01}}\n")
    specs = {s.label: s for s in api.expand(api.load_suite(write_suite(tmp_path, first)))}
    assert specs["erm_continued"].parent.run_id == specs["erm"].run_id == specs["lsq"].parent.run_id
    assert specs["erm_continued"].run_id != specs["erm"].run_id


class Killed(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("killed_at", [2, 4])  # before and after the switch at 3
def test_a_killed_switch_at_run_resumes_to_the_uninterrupted_numbers(tmp_path, monkeypatch, killed_at):
    from qatbench.runner import resume
    from tests.test_resume import _same

    text = SUITE.replace("methods:\n  - {name: erm, hparams: {lr: 0.01}}\n", "parent: {name: erm}\nmethods:\n")
    suite = api.load_suite(write_suite(tmp_path, text.replace("checkpoint_every: 0", "checkpoint_every: 2")))
    straight = api.run(suite, tmp_path / "straight", progress=False).records[0]
    save = resume.save

    def killed(folder, step, *args):
        save(folder, step, *args)
        if step == killed_at and not (folder / "killed-once").exists():
            (folder / "killed-once").touch()
            raise Killed("the process died here")

    monkeypatch.setattr(resume, "save", killed)
    assert api.run(suite, tmp_path / "resumed", progress=False).records[0]["status"] == "failed"
    again = api.run(suite, tmp_path / "resumed", progress=False).records[0]
    assert again["status"] == "done" and again["resumed_from_step"] == killed_at
    assert _curve(tmp_path / "resumed", again) == _curve(tmp_path / "straight", straight)
    folders = [d / "proto" / straight["run_id"] for d in (tmp_path / "resumed", tmp_path / "straight")]
    assert _same(*(torch.load(f / store.MODEL, weights_only=False) for f in folders))  # bit for bit


def test_the_gpu_lite0_suite_quantizes_from_the_imagenet_weights_with_lsq_s_other_protocols_as_rows():
    """suites/pacs_lite0_full.yaml: GAQAT's protocol for every quantized entry that can take it, the
    FP-parent protocol and QT-DoG's switch as lsq's rows, the distilling methods from the erm run."""
    specs = api.expand(api.load_suite(ROOT / "suites" / "pacs_lite0_full.yaml"))
    assert len(specs) == 284
    labels = {(s.label, s.bits_label): s for s in specs if s.seed == 0 and s.test_envs == (3,)}
    for label in ("lsq", "lsq_sagm", "gaqat", "fqat"):
        for bits in ("W4A4", "W3A3"):
            assert labels[label, bits].protocol.name == "from_pretrained" and labels[label, bits].parent is None
    erm = labels["erm", "FP"]
    assert labels["lsq_from_fp", "W4A4"].parent.run_id == erm.run_id
    assert {labels[m, "W4A4"].parent.run_id for m in ("fpq", "kd", "cr", "mec")} == {erm.run_id}
    switch = labels["lsq_switch_at_2000", "W4A4"]
    assert switch.parent is None and switch.protocol.fp_hparams == dict(erm.hparams)
    assert {s.quant.depthwise_per_channel for s in specs if s.quant} == {True}
    assert erm.steps == 5000 and dict(erm.model_options)["input_size"] == 224
    assert dict(erm.dataset_options) == {"folder": "PACS-64", "image_size": 64}


def test_the_pacs_grid_is_the_issue_s_grid():
    """suites/pacs64_lite0.yaml, the PACS leaderboard: every method, protocol and bit width issue 23 names,
    over 4 test domains x 3 seeds."""
    specs = api.expand(api.load_suite(ROOT / "suites" / "pacs64_lite0.yaml"))
    cells = {}
    for s in specs:
        cells.setdefault((s.label, s.bits_label, s.protocol.name), set()).add((s.test_envs, s.seed))
    # CPU scale: the quantized entries fine-tune the erm run; GAQAT's protocol is the lsq_from_pretrained row
    from_fp = {(m, b, "from_fp_run") for m in ("lsq", "lsq_sagm", "gaqat", "fqat") for b in ("W4A4", "W3A3")}
    from_fp |= {(m, "W4A4", "from_fp_run") for m in ("fpq", "kd", "cr", "mec")}
    pretrained = {("lsq_from_pretrained", "W4A4", "from_pretrained")}
    post = {(m, b, "from_fp_run") for m in ("ptq", "dnq") for b in ("W4A4", "W3A3")}
    trained = {("erm", "FP", "from_fp_run"), ("sagm", "FP", "from_fp_run"), ("lsq_switch_at_200", "W4A4", "switch_at")}
    trained.add(("erm_continued", "FP", "from_fp_run"))  # the control of the quantized cells' extra steps
    trained |= {("qtdog", "W7A32", "switch_at"), ("qtdog_w4", "W4A32", "switch_at")}
    ensembles = {("erm_ensemble", "FP", "from_fp_run"), ("eoq", "W7A32", "from_fp_run")}
    assert set(cells) == pretrained | from_fp | post | trained | ensembles
    for key, runs in cells.items():
        seeds = {0} if key in ensembles else {0, 1, 2}  # an ensemble is one run over the seeds
        assert runs == {((d,), seed) for d in range(4) for seed in seeds}, key
    assert len(specs) == 284 and {s.quant.depthwise_per_channel for s in specs if s.quant} == {True}
    by_label = {s.label: s for s in specs if s.seed == 0 and s.test_envs == (3,)}
    assert by_label["lsq"].parent.run_id == by_label["erm"].run_id and by_label["lsq_from_pretrained"].parent is None
    assert by_label["fpq"].parent.run_id == by_label["erm"].run_id == by_label["erm_continued"].parent.run_id
    assert by_label["erm_continued"].hparams == {**by_label["lsq"].hparams, "weight_decay": 1.0e-4}  # lsq's, resolved
    # per-channel weights starting at their range, but qtdog's committed W7A32 runs keep LSQ's start
    assert by_label["lsq"].quant.w_per_channel and by_label["lsq"].quant.step_init == "minmax"
    assert by_label["qtdog"].quant.step_init == "lsq" and by_label["qtdog_w4"].quant.step_init == "minmax"
    assert by_label["ptq"].quant.quantizer == "minmax" and by_label["ptq"].quant.step_init == "lsq"
    assert by_label["qtdog"].protocol.switch_at == 240 and by_label["lsq_switch_at_200"].protocol.switch_at == 200
