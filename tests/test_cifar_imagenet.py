"""Claims about CIFAR-10/100 (python pickles), CIFAR-10-C (.npy corruption x severity files) and
ImageNet-style train/val folders, on tiny files written here in the official formats: shapes,
pixel layout, labels, fixed splits, environments, option filters, one-line errors, the suite's
test-environment patterns, and one end-to-end CLI run on CIFAR-10-C."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qatbench.cli import main
from qatbench.data import DATASETS, build_dataset, split_environments
from qatbench.data.cifar import CORRUPTIONS, EXTRA_CORRUPTIONS
from qatbench.data.transforms import CIFAR10_MEAN, CIFAR10_STD
from qatbench.errors import UserError
from qatbench.runner.api import expand, load_suite
from tests.conftest import run_cli, write_suite

TRAIN_PER_BATCH, N_TEST = 4, 6
N_C = 10  # CIFAR-10-C images per severity
C_CORRUPTIONS = ["gaussian_noise", "fog"]
PIXEL_A, PIXEL_B = (11, 22, 33), (44, 55, 66)  # RGB at (row 2, col 5) and (row 5, col 2)


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("QATBENCH_CACHE", str(folder))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return folder


def cifar_rows(first_id: int, n: int) -> np.ndarray:
    """(n, 3072) uint8 rows as the pickles store them: the R plane, then G, then B, each 32x32
    row-major. Image i holds its id at R(0, 0), PIXEL_A at (2, 5), PIXEL_B at (5, 2), else zeros."""
    data = np.zeros((n, 3072), dtype=np.uint8)
    for i in range(n):
        data[i, 0] = first_id + i
        for (r, c), rgb in (((2, 5), PIXEL_A), ((5, 2), PIXEL_B)):
            for plane, value in enumerate(rgb):
                data[i, plane * 1024 + r * 32 + c] = value
    return data


def dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def label_of_train(i: int) -> int:
    return (3 * i + 1) % 10


def label_of_test(i: int) -> int:
    return (7 * i + 2) % 10


def make_cifar10(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    for b in range(5):
        ids = range(b * TRAIN_PER_BATCH, (b + 1) * TRAIN_PER_BATCH)
        dump(
            folder / f"data_batch_{b + 1}",
            {
                b"batch_label": f"training batch {b + 1} of 5".encode(),
                b"data": cifar_rows(ids[0], TRAIN_PER_BATCH),
                b"labels": [label_of_train(i) for i in ids],
                b"filenames": [f"img{i}.png".encode() for i in ids],
            },
        )
    dump(
        folder / "test_batch",
        {b"data": cifar_rows(100, N_TEST), b"labels": [label_of_test(i) for i in range(N_TEST)]},
    )
    return root


def c_value(corruption: int, severity: int, j: int) -> int:
    return 40 * severity + 7 * corruption + j


def make_cifar10c(root: Path, corruptions=C_CORRUPTIONS) -> Path:
    make_cifar10(root)
    folder = root / "CIFAR-10-C"
    folder.mkdir()
    np.save(folder / "labels.npy", np.arange(5 * N_C, dtype=np.int64) % 10)
    for ci, name in enumerate(corruptions):
        array = np.zeros((5 * N_C, 32, 32, 3), dtype=np.uint8)  # (N, H, W, C) as the release stores it
        for s in range(1, 6):
            for j in range(N_C):
                array[(s - 1) * N_C + j] = c_value(ci, s, j)
        array[:, 1, 3] = (1, 2, 3)  # RGB at (row 1, col 3)
        np.save(folder / f"{name}.npy", array)
    return root


def rows(env) -> tuple[torch.Tensor, torch.Tensor]:
    return env.take(np.arange(len(env)))


# --------------------------------------------------------------------------------------------- CIFAR-10/100


def test_cifar10_reads_the_five_training_batches_and_the_test_batch(tmp_path):
    dataset = build_dataset("CIFAR10", make_cifar10(tmp_path), 0)
    assert dataset.name == "CIFAR10" and dataset.environments == ["clean"]
    assert dataset.input_shape == (3, 32, 32) and dataset.num_classes == 10
    x, y = rows(dataset.envs[0])
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8
    assert x[:, 0, 0, 0].tolist() == list(range(20))  # batches 1..5 concatenated in order
    assert y.tolist() == [label_of_train(i) for i in range(20)]


def test_cifar_pixels_are_r_then_g_then_b_planes_of_row_major_32x32(tmp_path):
    dataset = build_dataset("CIFAR10", make_cifar10(tmp_path), 0)
    x, _ = rows(dataset.envs[0])
    assert x[7, :, 2, 5].tolist() == list(PIXEL_A)
    assert x[7, :, 5, 2].tolist() == list(PIXEL_B)
    assert int(x[7].int().sum()) == 7 + sum(PIXEL_A) + sum(PIXEL_B)  # nothing else is set


@pytest.mark.parametrize("holdout_fraction", [0.1, 0.5, 0.9])
def test_cifar_clean_env_trains_on_the_training_set_and_validates_on_the_test_set(tmp_path, holdout_fraction):
    dataset = build_dataset("CIFAR10", make_cifar10(tmp_path), 0)
    (split,) = split_environments(dataset, holdout_fraction, data_seed=5)
    x_in, y_in = rows(split.in_split)
    x_out, y_out = rows(split.out_split)
    assert split.name == "clean"
    assert x_in[:, 0, 0, 0].tolist() == list(range(20)) and y_in.tolist() == [label_of_train(i) for i in range(20)]
    assert x_out[:, 0, 0, 0].tolist() == list(range(100, 106)) and y_out.tolist() == [
        label_of_test(i) for i in range(6)
    ]
    assert x_out[3, :, 2, 5].tolist() == list(PIXEL_A)


def test_cifar_transforms_use_the_cifar10_channel_statistics(tmp_path):
    dataset = build_dataset("CIFAR10", make_cifar10(tmp_path), 0)
    x, _ = rows(dataset.envs[0])
    out = dataset.eval_transform(x[:3])
    mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, dtype=torch.float64).view(1, 3, 1, 1)
    assert CIFAR10_MEAN == (0.4914, 0.4822, 0.4465) and CIFAR10_STD == (0.2470, 0.2435, 0.2616)
    assert (out.double() - (x[:3].double() / 255 - mean) / std).abs().max().item() < 1e-6
    torch.manual_seed(0)
    augmented = dataset.train_transform(x[0])
    assert augmented.shape == (3, 32, 32) and augmented.dtype == torch.float32


def test_cifar100_reads_fine_labels_from_train_and_test(tmp_path):
    folder = tmp_path / "cifar-100-python"
    fine_train, fine_test = [97, 3, 55, 0, 99, 42, 12], [64, 8, 71]
    dump(folder / "train", {b"data": cifar_rows(0, 7), b"fine_labels": fine_train, b"coarse_labels": [1] * 7})
    dump(folder / "test", {b"data": cifar_rows(50, 3), b"fine_labels": fine_test, b"coarse_labels": [2] * 3})
    dataset = build_dataset("CIFAR100", tmp_path, 0)
    assert dataset.name == "CIFAR100" and dataset.num_classes == 100 and dataset.input_shape == (3, 32, 32)
    train, test = dataset.fixed_splits[0]
    assert rows(train)[1].tolist() == fine_train and rows(test)[1].tolist() == fine_test
    assert rows(test)[0][:, 0, 0, 0].tolist() == [50, 51, 52]


def test_missing_cifar_batch_is_named_with_what_the_folder_holds(tmp_path):
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(UserError) as info:
        build_dataset("CIFAR10", tmp_path, 0)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"CIFAR10: missing data_batch_4 in {tmp_path / 'cifar-10-batches-py'} ")
    assert "found: data_batch_1, data_batch_2, data_batch_3, data_batch_5, test_batch" in message


def test_missing_cifar_folder_is_named(tmp_path):
    with pytest.raises(UserError, match=r"CIFAR100: missing train in .*cifar-100-python .*found: nothing"):
        build_dataset("CIFAR100", tmp_path, 0)


def test_a_file_that_is_not_a_pickle_is_named(tmp_path):
    make_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(UserError) as info:
        build_dataset("CIFAR10", tmp_path, 0)
    assert str(info.value).startswith(f"{bad}: not a CIFAR python pickle (")
    assert len(str(info.value).splitlines()) == 1
    dump(bad, [1, 2, 3])
    with pytest.raises(UserError, match=r"test_batch: not a CIFAR python pickle \(holds a list, not a dict\)"):
        build_dataset("CIFAR10", tmp_path, 0)
    dump(bad, {b"data": cifar_rows(0, 2), b"fine_labels": [1, 2]})
    with pytest.raises(UserError, match=r"test_batch has keys \['data', 'fine_labels'\]; expected data, labels"):
        build_dataset("CIFAR10", tmp_path, 0)


def test_a_batch_with_fewer_labels_than_images_is_a_user_error_naming_the_file(tmp_path):
    make_cifar10(tmp_path)
    dump(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": cifar_rows(0, 6), b"labels": [1] * 5})
    with pytest.raises(UserError, match="test_batch"):
        build_dataset("CIFAR10", tmp_path, 0)


# --------------------------------------------------------------------------------------------- CIFAR-10-C


def test_cifar10c_has_clean_then_one_env_per_corruption_and_severity(tmp_path):
    root = make_cifar10c(tmp_path)
    dataset = build_dataset("CIFAR10C", root, 0, {"corruptions": C_CORRUPTIONS})
    names = ["clean", *(f"{c}/{s}" for c in C_CORRUPTIONS for s in range(1, 6))]
    assert dataset.name == "CIFAR10C" and dataset.environments == names
    assert dataset.num_classes == 10 and dataset.input_shape == (3, 32, 32)
    assert [len(env) for env in dataset.envs] == [20] + [N_C] * 10
    assert dataset.fixed_splits.keys() == {0}
    for k, name in enumerate(names[1:], start=1):
        corruption, severity = name.split("/")
        ci, s = C_CORRUPTIONS.index(corruption), int(severity)
        x, y = rows(dataset.envs[k])
        assert x.shape == (N_C, 3, 32, 32) and x.dtype == torch.uint8
        # rows of the severity's block of the .npy, channels first
        assert x[:, 0, 0, 0].tolist() == [c_value(ci, s, j) for j in range(N_C)], name
        assert x[:, :, 1, 3].tolist() == [[1, 2, 3]] * N_C
        assert y.tolist() == [((s - 1) * N_C + j) % 10 for j in range(N_C)]


def test_corruption_envs_are_never_trained_on_even_when_not_test_envs(tmp_path):
    dataset = build_dataset("CIFAR10C", make_cifar10c(tmp_path), 0, {"corruptions": C_CORRUPTIONS})
    severity_5 = tuple(i for i, name in enumerate(dataset.environments) if name.endswith("/5"))
    assert severity_5 == (5, 10)
    assert dataset.train_envs(severity_5) == [0]
    assert dataset.train_envs(()) == [0]


def test_cifar10c_corruption_envs_are_split_by_the_holdout_fraction(tmp_path):
    dataset = build_dataset("CIFAR10C", make_cifar10c(tmp_path), 0, {"corruptions": ["fog"], "severities": [3]})
    clean, fog = split_environments(dataset, 0.2, data_seed=0)
    assert (len(clean.in_split), len(clean.out_split)) == (20, N_TEST)
    assert (len(fog.in_split), len(fog.out_split)) == (8, 2)
    values = rows(fog.in_split)[0][:, 0, 0, 0].tolist() + rows(fog.out_split)[0][:, 0, 0, 0].tolist()
    assert sorted(values) == [c_value(1, 3, j) for j in range(N_C)]


def test_cifar10c_options_restrict_corruptions_and_severities(tmp_path):
    root = make_cifar10c(tmp_path)
    dataset = build_dataset("CIFAR10C", root, 0, {"corruptions": ["fog"], "severities": [4, 2]})
    assert dataset.environments == ["clean", "fog/4", "fog/2"]
    assert rows(dataset.envs[1])[0][:, 0, 0, 0].tolist() == [c_value(1, 4, j) for j in range(N_C)]
    assert rows(dataset.envs[2])[0][:, 0, 0, 0].tolist() == [c_value(1, 2, j) for j in range(N_C)]
    meta = DATASETS.entry("CIFAR10C").meta["environments"]
    assert meta(corruptions=("fog",), severities=(4, 2)) == dataset.environments
    assert len(meta()) == 1 + 15 * 5 and meta()[:3] == ["clean", "gaussian_noise/1", "gaussian_noise/2"]


def test_unknown_corruption_or_severity_is_refused_with_what_is_allowed(tmp_path):
    root = make_cifar10c(tmp_path)
    with pytest.raises(UserError) as info:
        build_dataset("CIFAR10C", root, 0, {"corruptions": ["fog", "rain"]})
    assert str(info.value) == f"corruptions: unknown rain; allowed: {', '.join(CORRUPTIONS + EXTRA_CORRUPTIONS)}"
    with pytest.raises(UserError, match=r"severities: \(0, 5\) not allowed; allowed: a non-empty subset of 1, 2"):
        build_dataset("CIFAR10C", root, 0, {"corruptions": ["fog"], "severities": (0, 5)})
    with pytest.raises(UserError, match=r"CIFAR10C: no .*CIFAR-10-C/snow.npy; found corruptions: fog, gaussian_noise"):
        build_dataset("CIFAR10C", root, 0, {"corruptions": ["snow"]})


def test_cifar10c_npy_of_the_wrong_shape_is_named(tmp_path):
    root = make_cifar10c(tmp_path)
    np.save(root / "CIFAR-10-C" / "fog.npy", np.zeros((5 * N_C, 3, 32, 32), dtype=np.uint8))
    with pytest.raises(UserError, match=r"fog.npy has shape \(50, 3, 32, 32\); expected \(50, 32, 32, 3\)"):
        build_dataset("CIFAR10C", root, 0, {"corruptions": ["fog"]})


CIFAR10C_SUITE = """
name: c10c
datasets:
  - name: CIFAR10C
    test_envs: {test_envs}
    options: {{corruptions: [gaussian_noise, fog], severities: [1, 5]}}
models: [resnet20]
methods: [erm]
training: {{steps: 2, batch_size: 4, eval_every: 2, eval_batch_size: 64}}
"""


@pytest.mark.parametrize(
    "test_envs, expected",
    [
        ('["*/*"]', [(1, 2, 3, 4)]),  # clean, gaussian_noise/1, gaussian_noise/5, fog/1, fog/5
        ('["*/5"]', [(2, 4)]),
        ('["fog/*", "*/1"]', [(3, 4), (1, 3)]),
        ("none", [()]),
    ],
)
def test_suite_test_env_patterns_resolve_over_corruption_names(tmp_path, test_envs, expected):
    suite = load_suite(write_suite(tmp_path, CIFAR10C_SUITE.format(test_envs=test_envs)))
    specs = expand(suite)
    assert [s.test_envs for s in specs] == expected
    assert all(s.dataset_options["corruptions"] == ("gaussian_noise", "fog") for s in specs)


def test_dry_run_lists_one_run_per_pattern(tmp_path, capsys):
    path = write_suite(tmp_path, CIFAR10C_SUITE.format(test_envs='["*/*", "*/5"]'))
    assert main(["run", str(path), "--dry-run", "--results", str(tmp_path / "res")]) == 0
    out = capsys.readouterr().out
    assert "test_envs=[1, 2, 3, 4]" in out and "test_envs=[2, 4]" in out and "2 runs in suite 'c10c'" in out
    path = write_suite(tmp_path, CIFAR10C_SUITE.format(test_envs='[[clean, "*/*"]]'))
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "test_envs[0]: every environment of CIFAR10C is a test environment; none would be left to train on"
    )


def test_unknown_corruption_in_a_suite_is_refused_before_any_run(tmp_path, capsys):
    text = CIFAR10C_SUITE.format(test_envs='["*/*"]').replace("[gaussian_noise, fog]", "[rain]")
    path = write_suite(tmp_path, text)
    assert main(["run", str(path), "--dry-run"]) == 2
    assert "corruptions: unknown rain; allowed: gaussian_noise" in capsys.readouterr().err


def test_a_pattern_that_matches_nothing_is_refused(tmp_path, capsys):
    path = write_suite(tmp_path, CIFAR10C_SUITE.format(test_envs='["*/3"]'))
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pattern '*/3' matches no environment of CIFAR10C; it has: clean, gaussian_noise/1" in err


def test_cli_run_on_tiny_cifar10c_reports_mean_corruption_accuracy(tmp_path):
    root = make_cifar10c(tmp_path / "data")
    suite = write_suite(tmp_path, CIFAR10C_SUITE.format(test_envs='["*/*"]'))
    results = tmp_path / "results"
    result = run_cli("run", str(suite), "--data-root", str(root), "--results", str(results), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "1 runs: 1 done (0 already finished, skipped)" in result.stdout
    (path,) = results.rglob("record.json")
    record = json.loads(path.read_text())
    assert record["status"] == "done" and record["final_step"] == 2
    assert record["environments"] == ["clean", "gaussian_noise/1", "gaussian_noise/5", "fog/1", "fog/5"]
    assert record["test_envs"] == [1, 2, 3, 4]
    assert (record["env0_in_n"], record["env0_out_n"]) == (20, N_TEST)
    assert all((record[f"env{i}_in_n"], record[f"env{i}_out_n"]) == (8, 2) for i in range(1, 5))
    accuracies = [record[f"env{i}_acc"] for i in range(1, 5)]
    assert record["ood_acc"] == pytest.approx(sum(accuracies) / 4, abs=1e-12)
    assert record["id_acc"] == record["env0_out_acc"]
    for i in range(5):  # whole-env accuracy is the size-weighted mean of in and out
        n_in, n_out = record[f"env{i}_in_n"], record[f"env{i}_out_n"]
        whole = (record[f"env{i}_in_acc"] * n_in + record[f"env{i}_out_acc"] * n_out) / (n_in + n_out)
        assert record[f"env{i}_acc"] == pytest.approx(whole, abs=1e-12)
    assert record["data_skipped_n"] == 0
    assert record["dataset_options.severities"] == [1, 5]


# --------------------------------------------------------------------------------------------- no test env


def test_report_of_a_run_without_test_envs_shows_its_id_accuracy(tmp_path, capsys):
    root = make_cifar10(tmp_path / "data")
    suite = write_suite(
        tmp_path,
        """
        name: c10
        datasets: [{name: CIFAR10, test_envs: none}]
        models: [{name: small_cnn, options: {width: 4}}]
        methods: [erm]
        training: {steps: 2, batch_size: 4, eval_every: 2}
        """,
    )
    results = tmp_path / "results"
    args = ["run", str(suite), "--data-root", str(root), "--results", str(results), "--device", "cpu", "--quiet"]
    assert main(args) == 0
    (path,) = results.rglob("record.json")
    record = json.loads(path.read_text())
    assert record["status"] == "done" and record["test_envs"] == []
    assert record["ood_acc"] is None and record["id_acc"] == record["env0_out_acc"]
    capsys.readouterr()
    assert main(["report", str(results)]) == 0
    out = capsys.readouterr().out
    assert "### c10 · CIFAR10 · small_cnn" in out
    erm_row = next(line for line in out.splitlines() if line.startswith("| erm"))
    assert f"{100 * record['id_acc']:.1f}" in erm_row


# --------------------------------------------------------------------------------------------- ImageNet

WNIDS = ["n01440764", "n01443537", "n01484850"]
TRAIN_NAMES = ["x_10.JPEG", "x_2.JPEG", "x_9.JPEG"]  # sorted order: _10, _2, _9


def train_color(c: int, i: int) -> tuple[int, int, int]:
    return (30 + 60 * c, 40 + 70 * i, 120)


def make_imagenet(root: Path, train_wnids=WNIDS, val_wnids=WNIDS) -> Path:
    for c, wnid in enumerate(train_wnids):
        folder = root / "imagenet" / "train" / wnid
        folder.mkdir(parents=True)
        for i, name in enumerate(sorted(TRAIN_NAMES)):
            Image.new("RGB", (20 + i, 16), train_color(c, i)).save(folder / name, quality=95)
        (folder / "LOC_synset.txt").write_text("not an image")
    for c, wnid in enumerate(val_wnids):
        folder = root / "imagenet" / "val" / wnid
        folder.mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (16, 24), (200, 30 * c, 10 + 100 * i)).save(folder / f"ILSVRC2012_val_{i}.JPEG")
    return root


def assert_solid(image: torch.Tensor, rgb, tol: int = 4) -> None:
    expected = torch.tensor(rgb).view(3, 1, 1)
    assert (image.int() - expected).abs().max().item() <= tol, (image[:, 0, 0].tolist(), rgb)


def test_imagenet_train_is_in_and_val_is_out_of_one_environment(tmp_path):
    dataset = build_dataset("ImageNet", make_imagenet(tmp_path), 0, {"image_size": 8})
    assert dataset.name == "ImageNet" and dataset.environments == ["imagenet"]
    assert dataset.num_classes == 3 and dataset.input_shape == (3, 8, 8)
    (split,) = split_environments(dataset, 0.5, data_seed=0)
    x_in, y_in = rows(split.in_split)
    x_out, y_out = rows(split.out_split)
    assert x_in.shape == (9, 3, 8, 8) and y_in.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert x_out.shape == (6, 3, 8, 8) and y_out.tolist() == [0, 0, 1, 1, 2, 2]
    for row in range(9):
        assert_solid(x_in[row], train_color(row // 3, row % 3))
    assert_solid(x_out[3], (200, 30, 110))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(dataset.eval_transform(x_out), (x_out.float() / 255 - mean) / std, atol=1e-6)


def test_train_per_class_keeps_the_first_files_of_each_class_in_sorted_order(tmp_path):
    dataset = build_dataset("ImageNet", make_imagenet(tmp_path), 0, {"image_size": 8, "train_per_class": 2})
    train, val = dataset.fixed_splits[0]
    x, y = rows(train)
    assert y.tolist() == [0, 0, 1, 1, 2, 2] and len(val) == 6
    for row in range(6):  # x_10 and x_2 of each class, never x_9
        assert_solid(x[row], train_color(row // 2, row % 2))


def test_unreadable_imagenet_files_are_skipped_and_listed(tmp_path):
    root = make_imagenet(tmp_path)
    broken = root / "imagenet" / "val" / WNIDS[1] / "ILSVRC2012_val_5.JPEG"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    dataset = build_dataset("ImageNet", root, 0, {"image_size": 8})
    assert [s.split(" (")[0] for s in dataset.skipped] == [str(broken)]
    train, val = dataset.fixed_splits[0]
    assert (len(train), len(val)) == (9, 6)
    assert rows(val)[1].tolist() == [0, 0, 1, 1, 2, 2]


def test_imagenet_cache_holds_center_crops_of_image_size(tmp_path, cache_in_tmp):
    root = make_imagenet(tmp_path)
    # a wide image: red left quarter, green middle half, blue right quarter; a center crop of the
    # short side keeps only the green middle, a squash to a square would keep red and blue edges
    stripes = np.zeros((16, 32, 3), dtype=np.uint8)
    stripes[:, :8] = (220, 0, 0)
    stripes[:, 8:24] = (0, 200, 0)
    stripes[:, 24:] = (0, 0, 220)
    for name in TRAIN_NAMES:
        Image.fromarray(stripes).save(root / "imagenet" / "train" / WNIDS[0] / name, quality=100, subsampling=0)
    dataset = build_dataset("ImageNet", root, 0, {"image_size": 8})
    shapes = sorted(np.load(p, mmap_mode="r").shape for p in cache_in_tmp.glob("*.images.npy"))
    assert shapes == [(6, 3, 8, 8), (9, 3, 8, 8)]
    x, _ = rows(dataset.envs[0])
    for row in range(3):
        assert_solid(x[row], (0, 200, 0), tol=30)


def test_imagenet_classes_differing_between_train_and_val_are_named(tmp_path):
    root = make_imagenet(tmp_path, val_wnids=[WNIDS[0], WNIDS[2], "n09999999"])
    with pytest.raises(UserError) as info:
        build_dataset("ImageNet", root, 0, {"image_size": 8})
    assert str(info.value) == (
        f"ImageNet: class folders of train and val differ in {root / 'imagenet'}: "
        "only in train: n01443537; only in val: n09999999"
    )


def test_imagenet_missing_val_folder_is_named(tmp_path):
    root = make_imagenet(tmp_path)
    for image in (root / "imagenet" / "val").glob("*/*"):
        image.unlink()
    for folder in (root / "imagenet" / "val").iterdir():
        folder.rmdir()
    (root / "imagenet" / "val").rmdir()
    (root / "imagenet" / "ILSVRC2012_devkit_t12").mkdir()
    with pytest.raises(UserError) as info:
        build_dataset("ImageNet", root, 0, {"image_size": 8})
    assert str(info.value).startswith(f"ImageNet: no folder {root / 'imagenet' / 'val'} (expected layout ")
    assert str(info.value).endswith(f"found in {root / 'imagenet'}: ILSVRC2012_devkit_t12, train")


def test_imagenet_train_folder_without_classes_is_a_user_error(tmp_path):
    (tmp_path / "imagenet" / "train").mkdir(parents=True)
    (tmp_path / "imagenet" / "val" / WNIDS[0]).mkdir(parents=True)
    with pytest.raises(UserError, match="train"):
        build_dataset("ImageNet", tmp_path, 0, {"image_size": 8})


@pytest.mark.parametrize(
    "dataset, options, expected",
    [
        ("CIFAR10", "{}", [()]),  # one environment: I.D. only
        ("ImageNet", "{}", [()]),
        ("CIFAR10C", "{corruptions: [fog], severities: [1, 5]}", [(1, 2)]),  # every corruption at once
        ("PACS", "{}", [(0,), (1,), (2,), (3,)]),  # leave-one-domain-out
    ],
)
def test_a_suite_without_test_envs_gets_the_dataset_default(tmp_path, dataset, options, expected):
    text = f"name: d\ndatasets: [{{name: {dataset}, options: {options}}}]\nmodels: [resnet20]\nmethods: [erm]\n"
    assert [s.test_envs for s in expand(load_suite(write_suite(tmp_path, text)))] == expected


def test_all_on_a_single_environment_dataset_is_refused_at_load(tmp_path, capsys):
    text = "name: d\ndatasets: [{name: CIFAR10, test_envs: all}]\nmodels: [resnet20]\nmethods: [erm]\n"
    result = run_cli("run", str(write_suite(tmp_path, text)), "--dry-run")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "datasets[0].test_envs: 'CIFAR10' has one environment (clean)" in result.stderr
    assert "use test_envs: none" in result.stderr


def test_an_unwritable_image_cache_folder_is_one_line_naming_it(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("QATBENCH_CACHE", str(blocker / "cache"))
    root = make_imagenet(tmp_path)
    with pytest.raises(UserError, match=r"^\$QATBENCH_CACHE: cannot write the image cache to .*a-file/cache"):
        build_dataset("ImageNet", root, 0, {"image_size": 8})
