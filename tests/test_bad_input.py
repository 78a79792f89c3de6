"""Every mistake a user can make in a suite or on the command line ends in one line that names
the file (or --set option), the key path and what is allowed, and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qatbench
from qatbench.cli import main
from tests.conftest import TINY_SUITE, run_cli, write_suite

ALL_METHODS = (
    "asam, checkpoint, cr, dnq, dorefa, ensemble, eoq, erm, fpq, fqat, gam, gaqat, kd, lsq, lsq_plus, lsq_sagm, "
    "lsq_sam, mec, pact, ptq, qtdog, sagm, sam"
)


def _fails_with_one_line(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "methods[1].name=lsqq",
            "--set methods[1].name: unknown method 'lsqq' (did you mean 'lsq'?); allowed: " + ALL_METHODS,
        ),
        (
            "datasets[0].name=RotatedMNST",
            "unknown dataset 'RotatedMNST' (did you mean 'RotatedMNIST'?); allowed: CIFAR10,",
        ),
        ("models[0].name=smal_cnn", "unknown model 'smal_cnn' (did you mean 'small_cnn'?)"),
        (
            "training.stpes=3",
            "--set training.stpes: unknown key 'stpes' (did you mean 'steps'?); "
            "allowed: batch_size, checkpoint_every, compile, diverge_factor, eval_batch_size, eval_every, "
            "parent_tolerance, steps, threads",
        ),
        ("methods[0].hparams.lrr=0.1", "--set methods[0].hparams.lrr: unknown hparam 'lrr' (did you mean 'lr'?)"),
        ("methods[0].hparams.lr=fast", "--set methods[0].hparams.lr: Input should be a valid number"),
        ("training.steps=many", "--set training.steps: Input should be a valid integer"),
        ("training.steps=-1", "--set training.steps: Input should be greater than or equal to 0"),
        ("quant.first_last=16bit", "--set quant.first_last: Input should be '8bit', 'fp' or 'same'"),
        ("bits=[W4A16]", "--set bits: bit widths must be from 2 to 8 (activations also A32: float inputs, weight-only quantization), got 'W4A16'"),
        ("datasets[0].test_envs=[6]", "environment index 6 is out of range; RotatedMNIST has 6 environments"),
        ("datasets[0].test_envs=[ninety]", "unknown environment 'ninety'; RotatedMNIST has: 0, 15, 30, 45, 60, 75"),
        ("parent=lsq", "--set parent: the parent of QAT runs must be a full-precision method, got 'lsq'"),
        ("training", "--set training: expected key=value"),
        ("name=../elsewhere", "--set name: String should match pattern"),
        ("models[0].options.width=wide", "--set models[0].options.width: expected int, got 'wide'"),
        ("methods=[erm, {name: erm, hparams: {lr: 0.01}}]", "a second entry labelled 'erm' (the first is methods[0])"),
        ("methods=[erm, {name: erm, label: again}]", "runs exactly what methods[0] runs"),
        ("datasets[0].test_envs=[]", "test_envs must be 'all', 'none' or a non-empty list"),
        ("datasets[0].test_envs=[[]]", "test_envs must be 'all', 'none' or a non-empty list"),
        ("datasets[0].test_envs=[1.5]", "test_envs must be 'all', 'none' or a non-empty list"),
        ("datasets[0].test_envs=[[0,1,2,3,4,5]]", "every environment of RotatedMNIST is a test environment"),
        ("seeds=[-1]", "--set seeds: Input should be greater than or equal to 0"),
        ("seeds=[true]", "--set seeds: Input should be a valid integer"),
        ("trainin.steps=3", "--set trainin.steps: unknown key 'trainin' (did you mean 'training'?)"),
        ("methods[-1].name=x", "--set methods[-1].name: a key path is names and list indices"),
        (
            "models[0].options.widht=8",
            "--set models[0].options.widht: unknown option 'widht' (did you mean 'width'?); allowed: freeze_bn, width",
        ),
        ("datasets[0].options.size=8", "--set datasets[0].options.size: unknown option 'size'; allowed: none"),
    ],
)
def test_bad_override_is_one_line_naming_the_key_and_what_is_allowed(capsys, tiny_suite, override, expected):
    err = _fails_with_one_line(capsys, ["run", str(tiny_suite), "--dry-run", "--set", override])
    assert expected in err


@pytest.mark.parametrize(
    "text, expected",
    [
        ("name: x\n  bad: [\n", "not valid YAML at line 2"),
        ("- just\n- a list\n", "a suite must be a YAML mapping"),
        ("datasets: [RotatedMNIST]\nmodels: [small_cnn]\n", "methods: required key is missing"),
        (
            "datasets: [RotatedMNIST]\nmodels: [small_cnn]\nmethods: [erm]\nseed: [1]\n",
            "seed: unknown key 'seed' (did you mean 'seeds'?)",
        ),
        (
            "datasets: [RotatedMNIST]\nmodels: [small_cnn]\nmethods: [{name: erm, hparams: {lr: [1]}}]\n",
            "methods[0].hparams.lr: Input should be a valid number",
        ),
        (
            "datasets: [RotatedMNIST]\nmodels: [small_cnn]\nmethods: [{name: erm, bits: [W4A4]}]\n",
            "methods[0].bits: method 'erm' is not quantized; `bits` belongs to QAT and PTQ entries",
        ),
        (
            "datasets: [RotatedMNIST]\nmodels: [small_cnn]\nmethods: [{name: lsq, bits: [W4A4, W4A4]}]\n",
            "methods[0].bits: a QAT or PTQ entry's bits are W<w>A<a> widths, each once",
        ),
        (
            "datasets: [RotatedMNIST]\nmodels: [small_cnn]\nmethods: [{name: lsq, bits: [W9A4]}]\n",
            "methods[0].bits",
        ),
        (
            "datasets: [{name: RotatedMNIST, holdout: 0.3}]\nmodels: [small_cnn]\nmethods: [erm]\n",
            "datasets[0].holdout: unknown key 'holdout' (did you mean 'holdout_fraction'?)",
        ),
    ],
)
def test_bad_suite_file_is_one_line_naming_the_file_and_key(capsys, tmp_path, text, expected):
    path = write_suite(tmp_path, text, "bad.yaml")
    err = _fails_with_one_line(capsys, ["run", str(path), "--dry-run"])
    assert f"{path}: " in err and expected in err


def test_missing_suite_file_and_missing_data_root_are_named(capsys, tiny_suite, tmp_path):
    assert "nope.yaml: suite file not found" in _fails_with_one_line(capsys, ["run", str(tmp_path / "nope.yaml")])
    err = _fails_with_one_line(capsys, ["run", str(tiny_suite), "--data-root", str(tmp_path / "no-data")])
    assert err == f"qatbench: error: --data-root: data root '{tmp_path / 'no-data'}' is not a directory"


@pytest.mark.parametrize(
    "device, expected", [("bogus", "--device: unknown device 'bogus'"), ("meta", "--device: unsupported device 'meta'")]
)
def test_bad_device_is_one_line(capsys, tiny_suite, tmp_path, device, expected):
    err = _fails_with_one_line(capsys, ["run", str(tiny_suite), "--results", str(tmp_path), "--device", device])
    assert expected in err and not (tmp_path / "tiny").exists()


def test_bad_report_arguments_are_one_line(capsys, tmp_path):
    assert "results folder not found" in _fails_with_one_line(capsys, ["report", str(tmp_path / "none")])
    assert "(did you mean 'latex'?)" in _fails_with_one_line(capsys, ["report", str(tmp_path), "--format", "tex"])
    (tmp_path / "a-file").write_text("")
    assert "--out" in _fails_with_one_line(capsys, ["report", str(tmp_path), "--out", str(tmp_path / "a-file")])


def test_a_bad_suite_in_a_fresh_process_prints_no_traceback(tmp_path):
    path = write_suite(tmp_path, TINY_SUITE.replace("name: lsq", "name: lqs"), "typo.yaml")
    result = run_cli("run", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"qatbench: error: {path}: methods[1].name: unknown method 'lqs' (did you mean 'lsq'?); allowed: {ALL_METHODS}"
    )


_KEYS = [
    "name",
    "datasets",
    "models",
    "methods",
    "bits",
    "seeds",
    "training",
    "quant",
    "parent",
    "data_root",
    "training.steps",
    "training.batch_size",
    "quant.first_last",
    "methods[0].hparams.lr",
    "methods[0].name",
    "datasets[0].test_envs",
    "datasets[0].holdout_fraction",
    "models[0].options",
    "colour",
    "training.lr",
    "training.checkpoint_every",
    "slurm",
    "slurm.tasks",
    "slurm.cluster",
    "slurm.mem_gb",
]
_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10),
    st.floats(allow_nan=False, width=32),
    st.text(max_size=6),
    st.lists(st.integers(-2, 9), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(_KEYS), value=_JUNK)
def test_any_malformed_field_ends_in_one_line_and_exit_2_never_a_traceback(capsys, tmp_path, key, value):
    path = tmp_path / "fuzz.yaml"
    path.write_text(TINY_SUITE)
    override = f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
    code = main(["run", str(path), "--dry-run", "--set", override])
    captured = capsys.readouterr()
    assert code in (0, 2)
    if code == 2:
        assert len(captured.err.strip().splitlines()) == 1, captured.err
        assert captured.err.startswith("qatbench: error: ")
    else:  # accepted: then it must describe runs that can start
        specs = qatbench.expand(qatbench.load_suite(path, [override]))
        assert specs and all(s.steps >= 0 and s.seed >= 0 and s.test_envs for s in specs)


def _laughs(depth: int = 9) -> str:
    """A few hundred bytes of YAML whose aliases expand to 10**depth items."""
    lines = ["- &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"- &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, depth)]
    return "[" + ", ".join(line[2:] for line in lines) + "]"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("seeds=[4294967296]", "--set seeds: Input should be less than or equal to 4294967295 (got 4294967296)"),
        ("datasets[0].holdout_fraction=0.0001", "holdout_fraction 0.0001 leaves environment '0' of RotatedMNIST"),
        ("models[0].options.width=-8", "--set models[0].options.width: a model option is a size, a rate or a count"),
        ("training.diverge_factor=.nan", "--set training.diverge_factor: nan is not a number a suite accepts"),
        ("methods[0].hparams.lr=-.inf", "--set methods[0].hparams.lr: -inf is not a number a suite accepts"),
        ("quant.percentile=[1, .nan]", "--set quant.percentile[1]: nan is not a number"),
        ("name=" + "s" * 300, "--set name: String should have at most 100 characters (got 'sss"),
        ("methods[0].label=" + "l" * 300, "--set methods[0].label: String should have at most 100 characters"),
        ("seeds=" + _laughs(), "--set seeds[4]: expands to more than 100,000 values (aliases within aliases?)"),
    ],
)
def test_input_mistakes_are_exit_2_before_any_run(capsys, tiny_suite, tmp_path, override, expected):
    err = _fails_with_one_line(capsys, ["run", str(tiny_suite), "--results", str(tmp_path / "r"), "--set", override])
    assert expected in err and len(err) < 400
    assert not list((tmp_path / "r").rglob("record.json"))  # no run started, none failed


def test_a_results_path_that_is_a_file_is_exit_2(capsys, tiny_suite, tmp_path):
    (tmp_path / "taken").write_text("")
    err = _fails_with_one_line(capsys, ["run", str(tiny_suite), "--results", str(tmp_path / "taken")])
    assert f"--results: {tmp_path / 'taken'} is a file, not a folder" in err


def test_a_baseline_that_names_no_method_in_the_results_is_exit_2(capsys):
    golden = str(Path(__file__).parent / "golden" / "results")
    err = _fails_with_one_line(capsys, ["report", golden, "--baseline", "lsqq"])
    assert "--baseline: no method labelled 'lsqq' in" in err and "(did you mean 'lsq'?)" in err


def test_a_key_given_twice_names_both_lines(capsys, tmp_path):
    path = write_suite(tmp_path, TINY_SUITE.replace("seeds: [0]\n", "seeds: [0]\nbits: [W8A8]\n"), "twice.yaml")
    err = _fails_with_one_line(capsys, ["run", str(path), "--dry-run"])
    lines = TINY_SUITE.splitlines()
    first = lines.index("bits: [W4A4]") + 1
    assert f"duplicate key 'bits' at lines {first} and {first + 2}" in err


def test_a_700_byte_suite_of_nested_aliases_is_a_short_line(capsys, tmp_path):
    text = TINY_SUITE.replace("seeds: [0]", "seeds: " + _laughs())
    assert len(text) < 1200
    path = write_suite(tmp_path, text, "laughs.yaml")
    err = _fails_with_one_line(capsys, ["run", str(path), "--dry-run"])
    assert ": seeds[4]: expands to more than 100,000 values" in err and len(err) < 300


_HOSTILE = st.one_of(
    st.sampled_from([".nan", ".inf", "-.inf", "[0, .nan]", "{lr: .inf}", "1.0e+400", _laughs(6), _laughs(9)]),
    st.integers(2**32, 2**200).map(str),  # beyond any seed, count or size
    st.text(alphabet="abc_", min_size=101, max_size=5000),  # names past the file system's
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(_KEYS + ["methods[0].label"]), text=_HOSTILE)
def test_hostile_values_end_in_one_bounded_line(capsys, tmp_path, key, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(TINY_SUITE)
    code = main(["run", str(path), "--dry-run", "--set", f"{key}={text}"])
    err = capsys.readouterr().err.strip()
    non_finite = "nan" in text or "inf" in text or text == "1.0e+400" or "&l5" in text
    assert code == 2 if non_finite else code in (0, 2)
    if code == 2:
        assert len(err.splitlines()) == 1 and err.startswith("qatbench: error: ")
        assert len(err) <= 2100  # the message names the value; it never prints 5,000 characters of it
