"""Claims about the DomainBed image-folder datasets (PACS, VLCS, OfficeHome, TerraIncognita,
DomainNet), the generic `image_folder` entry and the decode-once image cache, on tiny trees of
real PNG and JPEG files written here: environments, labels, decoded pixels, skipped files, the
one-line errors for wrong layouts, the cache's reuse and invalidation, splits and transforms."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import qatbench.data.image_cache as image_cache
from qatbench.cli import main
from qatbench.data import DATASETS, build_dataset, split_environments
from qatbench.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from qatbench.errors import UserError
from tests.conftest import write_suite

PACS_DOMAINS = ["art_painting", "cartoon", "photo", "sketch"]
PACS_CLASSES = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]
# each class file list, in the sorted order torchvision's make_dataset lists them
FILES = ["a.png", "b.png", "c.jpg", "d.png"]
PER_CLASS = len(FILES)


def color(domain: int, label: int) -> tuple[int, int, int]:
    """The solid color of the RGB images of one class in one domain: distinct for every pair."""
    return (20 + 30 * label, 220 - 25 * label, 40 + 50 * domain)


def gray(label: int) -> int:
    return 15 + 33 * label


def write_class_folder(folder: Path, domain: int, label: int) -> None:
    """Four images of four sizes and modes: RGB PNG, grayscale PNG, RGB JPEG, RGBA PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (10 + label, 12), color(domain, label)).save(folder / "a.png")
    Image.new("L", (9, 7 + domain), gray(label)).save(folder / "b.png")
    Image.new("RGB", (20, 14), color(domain, label)).save(folder / "c.jpg", quality=95)
    Image.new("RGBA", (13, 11), (*color(domain, label), 90)).save(folder / "d.png")


def make_tree(directory: Path, domains: list[str], classes: list[str]) -> Path:
    for d, domain in enumerate(domains):
        for k, name in enumerate(classes):
            write_class_folder(directory / domain / name, d, k)
    return directory


def make_pacs(root: Path, domains=PACS_DOMAINS, classes=PACS_CLASSES) -> Path:
    make_tree(root / "PACS", list(domains), list(classes))
    return root


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch) -> Path:
    """Every test caches under its own tmp folder, never in ~/.cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("QATBENCH_CACHE", str(folder))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return folder


@pytest.fixture
def pacs_root(tmp_path) -> Path:
    return make_pacs(tmp_path / "data")


def all_rows(env) -> tuple[torch.Tensor, torch.Tensor]:
    return env.take(np.arange(len(env)))


class CountingDecode:
    """Wraps image_cache.decode and counts its calls."""

    def __init__(self):
        self.calls: list[Path] = []
        self.real = image_cache.decode

    def __call__(self, path, size, fit="squash"):
        self.calls.append(Path(path))
        return self.real(path, size, fit)


@pytest.fixture
def decode_calls(monkeypatch) -> CountingDecode:
    counter = CountingDecode()
    monkeypatch.setattr(image_cache, "decode", counter)
    return counter


# --------------------------------------------------------------------------------------------- PACS


def test_pacs_has_domainbeds_domains_classes_and_one_env_per_domain_of_all_its_files(pacs_root):
    dataset = build_dataset("PACS", pacs_root, 0, {"image_size": 12})
    assert dataset.name == "PACS"
    assert dataset.environments == PACS_DOMAINS
    assert dataset.num_classes == 7
    assert dataset.input_shape == (3, 12, 12)
    assert [len(env) for env in dataset.envs] == [7 * PER_CLASS] * 4 == [28] * 4
    assert dataset.skipped == []
    for env in dataset.envs:
        x, y = all_rows(env)
        assert x.shape == (28, 3, 12, 12) and x.dtype == torch.uint8
        # labels follow the sorted class names; each class's files are listed in sorted order
        assert y.tolist() == [k for k in range(7) for _ in FILES]


def test_pacs_image_size_sets_the_decoded_size(pacs_root):
    dataset = build_dataset("PACS", pacs_root, 0, {"image_size": 8})
    assert dataset.input_shape == (3, 8, 8)
    assert all_rows(dataset.envs[2])[0].shape == (28, 3, 8, 8)


def test_decoded_pixels_keep_each_images_solid_color(pacs_root):
    dataset = build_dataset("PACS", pacs_root, 0, {"image_size": 8})
    for d, env in enumerate(dataset.envs):
        x, y = all_rows(env)
        for row in range(len(env)):
            label, name = int(y[row]), FILES[row % PER_CLASS]
            image = x[row].int()
            if name == "b.png":  # grayscale PNG: three equal channels, the gray level exactly
                expected = torch.full((3, 8, 8), gray(label))
                assert torch.equal(image, expected), (d, label, name)
            elif name == "c.jpg":  # JPEG is lossy
                expected = torch.tensor(color(d, label)).view(3, 1, 1).expand(3, 8, 8)
                assert (image - expected).abs().max().item() <= 4, (d, label, name)
            else:  # RGB PNG and RGBA PNG (alpha dropped): exactly the color, after any resize
                expected = torch.tensor(color(d, label)).view(3, 1, 1).expand(3, 8, 8)
                assert torch.equal(image, expected), (d, label, name)


def test_a_16_bit_png_is_scaled_to_8_bits_not_wrapped(tmp_path):
    root = tmp_path / "data"
    for domain in ("a", "b"):
        (root / domain / "x").mkdir(parents=True)
        Image.fromarray(np.full((6, 10), 40000, dtype=np.uint16)).save(root / domain / "x" / "deep.png")
    dataset = build_dataset("image_folder", root, 0, {"image_size": 4})
    x, _ = all_rows(dataset.envs[0])
    assert x.dtype == torch.uint8
    # 40000 / 65535 of full scale is 155.6 in 8 bits; wrapping modulo 256 would give 64
    assert set(x.flatten().tolist()) == {40000 >> 8} == {156}


def test_stray_non_image_files_are_ignored(tmp_path):
    root = make_pacs(tmp_path / "data")
    for folder in (root / "PACS", root / "PACS" / "photo", root / "PACS" / "photo" / "dog", root / "PACS" / "sketch"):
        (folder / "README.txt").write_text("not an image")
        (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        (folder / "Thumbs.db").write_bytes(os.urandom(64))
    dataset = build_dataset("PACS", root, 0, {"image_size": 8})
    assert [len(env) for env in dataset.envs] == [28, 28, 28, 28]
    assert dataset.skipped == []
    assert dataset.num_classes == 7


def add_corrupt_files(root: Path) -> list[Path]:
    """A random-bytes 'x.jpg' and a PNG cut in half, both in photo/dog."""
    folder = root / "PACS" / "photo" / "dog"
    junk = folder / "x.jpg"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    whole = (folder / "a.png").read_bytes()
    truncated = folder / "e.png"
    truncated.write_bytes(whole[: len(whole) // 2])
    return [junk, truncated]


def test_corrupt_images_are_skipped_listed_and_left_out_of_their_environment(tmp_path):
    root = make_pacs(tmp_path / "data")
    bad = add_corrupt_files(root)
    dataset = build_dataset("PACS", root, 0, {"image_size": 8})
    assert len(dataset.skipped) == 2
    assert sorted(s.split(" (")[0] for s in dataset.skipped) == sorted(str(p) for p in bad)
    # 30 files listed in photo, 2 unreadable: 28 left, and none of them is a zeroed row
    assert [len(env) for env in dataset.envs] == [28, 28, 28, 28]
    photo = dataset.envs[PACS_DOMAINS.index("photo")]
    assert len(photo.images) == 30
    x, y = all_rows(photo)
    assert (x.flatten(1).amax(1) > 0).all()
    assert y.tolist() == [k for k in range(7) for _ in FILES]
    # the rows of the two unreadable files (dog is class 0: rows 4 and 5 of the sorted listing a, b, c,
    # d, e.png, x.jpg) are in no split
    assert photo.indices.tolist() == [0, 1, 2, 3, *range(6, 30)]
    split = split_environments(dataset, 0.25, data_seed=0)[2]
    assert split.name == "photo" and len(split.in_split) == 21 and len(split.out_split) == 7
    assert sorted(split.in_split.indices.tolist() + split.out_split.indices.tolist()) == photo.indices.tolist()


# --------------------------------------------------------------------------------------------- bad layouts


def test_missing_dataset_folder_names_it_and_lists_what_the_root_holds(tmp_path):
    root = tmp_path / "data"
    (root / "pacs_v2").mkdir(parents=True)
    (root / "VLCS").mkdir()
    with pytest.raises(UserError) as info:
        build_dataset("PACS", root, 0, {"image_size": 8})
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert f"no folder {root / 'PACS'}" in message
    assert "<root>/PACS/<domain>/<class>/<image>" in message
    assert f"{root} holds: VLCS, pacs_v2" in message


@pytest.mark.parametrize(
    "name, folder",
    [
        ("PACS", "PACS"),
        ("VLCS", "VLCS"),
        ("OfficeHome", "office_home"),
        ("TerraIncognita", "terra_incognita"),
        ("DomainNet", "domain_net"),
    ],
)
def test_each_domainbed_entry_reads_the_folder_domainbeds_download_script_makes(tmp_path, name, folder):
    with pytest.raises(UserError, match=f"{name}: no folder {tmp_path / folder} "):
        build_dataset(name, tmp_path, 0)


def test_missing_domain_folder_names_it_and_lists_the_found_domains(tmp_path):
    root = make_pacs(tmp_path / "data", domains=["art_painting", "cartoon", "sketch"])
    with pytest.raises(UserError) as info:
        build_dataset("PACS", root, 0, {"image_size": 8})
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert f"missing domain folder(s) photo in {root / 'PACS'}" in message
    assert "found: art_painting, cartoon, sketch" in message


def test_class_folders_that_differ_between_domains_name_the_domain_and_the_missing_class(tmp_path):
    root = make_pacs(tmp_path / "data")
    for image in (root / "PACS" / "cartoon" / "giraffe").iterdir():
        image.unlink()
    (root / "PACS" / "cartoon" / "giraffe").rmdir()
    with pytest.raises(UserError) as info:
        build_dataset("PACS", root, 0, {"image_size": 8})
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert (
        f"class folders differ between domains in {root / 'PACS'}: cartoon lacks giraffe"
        == message.split("PACS: ", 1)[1]
    )


def test_wrong_class_count_against_domainbed_is_refused_with_both_counts(tmp_path):
    root = make_pacs(tmp_path / "data", classes=PACS_CLASSES[:6])
    with pytest.raises(UserError) as info:
        build_dataset("PACS", root, 0, {"image_size": 8})
    assert str(info.value) == (
        f"PACS: {root / 'PACS'} has 6 class folders per domain, DomainBed's PACS has "
        "dog, elephant, giraffe, guitar, horse, house, person (missing: person; not DomainBed's: -)"
    )


def test_misnamed_class_is_refused_even_with_the_right_count(tmp_path):
    classes = [*PACS_CLASSES[:-1], "people"]
    root = make_pacs(tmp_path / "data", classes=classes)
    with pytest.raises(
        UserError,
        match=r"has 7 class folders per domain, DomainBed's PACS has dog, .*, person "
        r"\(missing: person; not DomainBed's: people\)$",
    ):
        build_dataset("PACS", root, 0, {"image_size": 8})


def test_a_domain_without_images_is_refused_by_name(tmp_path):
    root = make_pacs(tmp_path / "data")
    for image in (root / "PACS" / "sketch").glob("*/*"):
        image.unlink()
    (root / "PACS" / "sketch" / "dog" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError) as info:
        build_dataset("PACS", root, 0, {"image_size": 8})
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"PACS: domain folder {root / 'PACS' / 'sketch'} holds no images (.jpg, .jpeg, .png")


def test_missing_dataset_folder_through_the_cli_is_one_line_and_exit_2(tmp_path, capsys):
    root = tmp_path / "empty-root"
    root.mkdir()
    suite = write_suite(
        tmp_path,
        """
        name: pacs-missing
        datasets: [{name: PACS, test_envs: [0], options: {image_size: 8}}]
        models: [{name: small_cnn, options: {width: 4}}]
        methods: [erm]
        training: {steps: 1, batch_size: 4, eval_every: 1}
        """,
    )
    code = main(["run", str(suite), "--data-root", str(root), "--results", str(tmp_path / "res"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and f"no folder {root / 'PACS'}" in err


# --------------------------------------------------------------------------------------------- end to end


def test_a_cli_run_on_pacs_records_how_many_files_were_skipped(tmp_path, capsys):
    root = make_pacs(tmp_path / "data")
    add_corrupt_files(root)
    suite = write_suite(
        tmp_path,
        """
        name: pacs-tiny
        datasets: [{name: PACS, test_envs: [2], options: {image_size: 16}}]
        models: [{name: small_cnn, options: {width: 4}}]
        methods: [erm]
        training: {steps: 2, batch_size: 4, eval_every: 2, eval_batch_size: 64}
        """,
    )
    results = tmp_path / "results"
    code = main(["run", str(suite), "--data-root", str(root), "--results", str(results), "--device", "cpu", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    (record_path,) = results.rglob("record.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "done"
    assert record["data_skipped_n"] == 2
    assert sorted(s.split(" (")[0].rsplit("/", 1)[1] for s in record["data_skipped"]) == ["e.png", "x.jpg"]
    assert record["environments"] == PACS_DOMAINS
    assert record["env2_in_n"] + record["env2_out_n"] == 28
    assert record["env0_out_n"] == int(28 * 0.2) == 5 and record["env0_in_n"] == 23
    assert record["ood_acc"] == record["env2_acc"]


# --------------------------------------------------------------------------------------------- the cache


def test_second_build_reads_the_cache_without_decoding(pacs_root, cache_in_tmp, decode_calls):
    first = build_dataset("PACS", pacs_root, 0, {"image_size": 8})
    assert len(decode_calls.calls) == 4 * 28
    assert len(list(cache_in_tmp.glob("*.images.npy"))) == 4
    assert len(list(cache_in_tmp.glob("*.labels.npy"))) == 4
    assert len(list(cache_in_tmp.glob("*.json"))) == 4
    assert not list(cache_in_tmp.glob("*.tmp"))
    second = build_dataset("PACS", pacs_root, 0, {"image_size": 8})
    assert len(decode_calls.calls) == 4 * 28  # not one more
    for a, b in zip(first.envs, second.envs):
        assert isinstance(b.images, np.memmap)
        assert torch.equal(all_rows(a)[0], all_rows(b)[0]) and torch.equal(all_rows(a)[1], all_rows(b)[1])
    # another image size is another cache
    build_dataset("PACS", pacs_root, 0, {"image_size": 6})
    assert len(decode_calls.calls) == 2 * 4 * 28
    assert len(list(cache_in_tmp.glob("*.images.npy"))) == 8


def test_cache_remembers_skipped_files(tmp_path, cache_in_tmp, decode_calls):
    root = make_pacs(tmp_path / "data")
    add_corrupt_files(root)
    first = build_dataset("PACS", root, 0, {"image_size": 8})
    again = build_dataset("PACS", root, 0, {"image_size": 8})
    assert len(decode_calls.calls) == 4 * 28 + 2
    assert again.skipped == first.skipped and len(again.skipped) == 2
    assert [len(env) for env in again.envs] == [28, 28, 28, 28]


def test_editing_one_file_invalidates_its_domains_cache_only(pacs_root, decode_calls):
    build_dataset("PACS", pacs_root, 0, {"image_size": 8})
    assert len(decode_calls.calls) == 112
    edited = pacs_root / "PACS" / "cartoon" / "horse" / "a.png"
    before = edited.stat()
    Image.new("RGB", (14, 12), (1, 2, 3)).save(edited)  # same size on disk is possible: the mtime must count
    os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns + 5_000_000_000))
    dataset = build_dataset("PACS", pacs_root, 0, {"image_size": 8})
    new_calls = decode_calls.calls[112:]
    assert len(new_calls) == 28  # the cartoon domain, decoded again; the three others from the cache
    assert {p.parent.parent.name for p in new_calls} == {"cartoon"}
    x, y = all_rows(dataset.envs[1])
    row = 4 * PACS_CLASSES.index("horse")  # a.png is the first file of its class
    assert int(y[row]) == 4
    assert torch.equal(x[row], torch.tensor([1, 2, 3], dtype=torch.uint8).view(3, 1, 1).expand(3, 8, 8))


def test_a_damaged_cache_file_is_decoded_again(pacs_root, cache_in_tmp, decode_calls):
    build_dataset("PACS", pacs_root, 0, {"image_size": 8})
    for images in cache_in_tmp.glob("*.images.npy"):
        images.write_bytes(images.read_bytes()[:100])
    dataset = build_dataset("PACS", pacs_root, 0, {"image_size": 8})
    assert len(decode_calls.calls) == 2 * 112
    x, _ = all_rows(dataset.envs[0])
    assert torch.equal(x[0], torch.tensor(color(0, 0), dtype=torch.uint8).view(3, 1, 1).expand(3, 8, 8))


def test_cache_off_decodes_in_memory_and_writes_nothing(tmp_path, monkeypatch, decode_calls):
    monkeypatch.setenv("QATBENCH_CACHE", "off")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = make_pacs(tmp_path / "data")
    before = sorted(p for p in tmp_path.rglob("*"))
    a = build_dataset("PACS", root, 0, {"image_size": 8})
    b = build_dataset("PACS", root, 0, {"image_size": 8})
    assert len(decode_calls.calls) == 2 * 112  # decoded each time
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert not isinstance(a.envs[0].images, np.memmap)
    assert torch.equal(all_rows(a.envs[3])[0], all_rows(b.envs[3])[0])


# --------------------------------------------------------------------------------------------- splits


def split_indices(dataset, data_seed):
    return [
        (s.in_split.indices.tolist(), s.out_split.indices.tolist())
        for s in split_environments(dataset, 0.25, data_seed=data_seed)
    ]


def test_splits_are_the_same_for_the_same_data_seed_and_differ_for_another(pacs_root):
    first = split_indices(build_dataset("PACS", pacs_root, 3, {"image_size": 8}), 3)
    again = split_indices(build_dataset("PACS", pacs_root, 3, {"image_size": 8}), 3)
    other = split_indices(build_dataset("PACS", pacs_root, 4, {"image_size": 8}), 4)
    assert first == again
    for (ins, outs), (other_in, other_out) in zip(first, other):
        assert len(outs) == len(other_out) == 7 and len(ins) == len(other_in) == 21
        assert sorted(ins + outs) == sorted(other_in + other_out) == list(range(28))
    assert [outs for _, outs in first] != [outs for _, outs in other]
    # environments are split independently: not one permutation reused for every domain
    assert len({tuple(outs) for _, outs in first}) > 1


# --------------------------------------------------------------------------------------------- image_folder


def test_image_folder_learns_sorted_domains_from_disk(tmp_path):
    root = tmp_path / "data"
    make_tree(root / "mine", ["zeta", "alpha", "mid"], ["cat", "ant"])
    (root / "mine" / ".hidden").mkdir()
    (root / "mine" / "notes.txt").write_text("x")
    dataset = build_dataset("image_folder", root, 0, {"folder": "mine", "image_size": 8})
    assert dataset.environments == ["alpha", "mid", "zeta"]
    assert dataset.num_classes == 2 and dataset.input_shape == (3, 8, 8)
    assert [len(env) for env in dataset.envs] == [8, 8, 8]
    # labels follow the sorted class names: ant = 0, cat = 1; "zeta" was written as domain 0
    x, y = all_rows(dataset.envs[2])
    assert y.tolist() == [0] * 4 + [1] * 4
    assert tuple(x[0, :, 0, 0].tolist()) == color(0, 1)  # ant was class index 1 when written
    assert DATASETS.entry("image_folder").meta.get("environments") is None


def test_image_folder_reads_the_root_itself_by_default(tmp_path):
    root = make_tree(tmp_path / "tree", ["d1", "d2"], ["only"])
    dataset = build_dataset("image_folder", root, 0, {"image_size": 8})
    assert dataset.environments == ["d1", "d2"] and dataset.num_classes == 1


def test_image_folder_domains_option_selects_a_subset(tmp_path):
    root = tmp_path / "data"
    make_tree(root, ["a", "b", "c", "d"], ["x", "y", "z"])
    (root / "d" / "w").mkdir()  # an unselected domain's extra class does not matter
    Image.new("RGB", (4, 4)).save(root / "d" / "w" / "a.png")
    dataset = build_dataset("image_folder", root, 0, {"image_size": 8, "domains": ["b", "c"]})
    assert dataset.environments == ["b", "c"]
    assert dataset.num_classes == 3
    x, _ = all_rows(dataset.envs[0])
    assert tuple(x[0, :, 0, 0].tolist()) == color(1, 0)  # domain b is the second one written
    with pytest.raises(UserError, match=r"missing domain folder\(s\) e in .*; found: a, b, c, d"):
        build_dataset("image_folder", root, 0, {"image_size": 8, "domains": ["a", "e"]})
    with pytest.raises(UserError, match=r"class folders differ between domains in .*: a lacks w; b lacks w"):
        build_dataset("image_folder", root, 0, {"image_size": 8, "domains": ["a", "b", "d"]})


def test_image_folder_on_an_empty_folder_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"missing domain folder\(s\) \(any\) in .*empty .*found: nothing"):
        build_dataset("image_folder", tmp_path, 0, {"folder": "empty", "image_size": 8})


# --------------------------------------------------------------------------------------------- transforms


def test_train_transform_turns_a_uint8_image_into_a_float_image_of_the_same_size(pacs_root):
    dataset = build_dataset("PACS", pacs_root, 0, {"image_size": 12})
    image, _ = dataset.envs[0][0]
    assert image.dtype == torch.uint8 and image.shape == (3, 12, 12)
    torch.manual_seed(0)
    out = dataset.train_transform(image)
    assert out.dtype == torch.float32 and out.shape == (3, 12, 12)
    assert out.abs().max().item() < 3.0  # normalized with ImageNet statistics, not raw 0..255
    assert image.dtype == torch.uint8  # the cached image is not touched


def test_eval_transform_is_imagenet_normalization_of_the_whole_batch(pacs_root):
    dataset = build_dataset("PACS", pacs_root, 0, {"image_size": 8})
    x, _ = all_rows(dataset.envs[1])
    kept = x.clone()
    out = dataset.eval_transform(x)
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    expected = (x.double() / 255 - mean) / std
    assert (IMAGENET_MEAN, IMAGENET_STD) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert out.dtype == torch.float32 and out.shape == (28, 3, 8, 8)
    assert (out.double() - expected).abs().max().item() < 1e-6
    assert torch.equal(x, kept)


# --------------------------------------------------------------------------------------------- other DomainBed entries


@pytest.mark.parametrize(
    "name, environments, num_classes",
    [
        ("PACS", ["art_painting", "cartoon", "photo", "sketch"], 7),
        ("VLCS", ["Caltech101", "LabelMe", "SUN09", "VOC2007"], 5),
        ("OfficeHome", ["Art", "Clipart", "Product", "Real World"], 65),
        ("TerraIncognita", ["location_100", "location_38", "location_43", "location_46"], 10),
        ("DomainNet", ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"], 345),
    ],
)
def test_domainbed_entries_have_domainbeds_environments_and_class_counts(tmp_path, name, environments, num_classes):
    entry = DATASETS.entry(name)
    assert entry.meta["environments"] == environments
    assert entry.summary.startswith(f"{len(environments)} domains x {num_classes} classes")
    # a tree with the right domains but 2 classes is refused with DomainBed's count (or class names)
    folder = {"OfficeHome": "office_home", "TerraIncognita": "terra_incognita", "DomainNet": "domain_net"}
    for domain in environments:
        for cls in ("aaa", "bbb"):
            (tmp_path / folder.get(name, name) / domain / cls).mkdir(parents=True)
    with pytest.raises(UserError, match=f"has 2 class folders per domain, DomainBed's {name} has") as info:
        build_dataset(name, tmp_path, 0, {"image_size": 8})
    if num_classes > 10:
        assert str(info.value).endswith(f"DomainBed's {name} has {num_classes} classes")


def test_a_tiny_vlcs_tree_loads(tmp_path):
    domains = ["Caltech101", "LabelMe", "SUN09", "VOC2007"]
    classes = ["bird", "car", "chair", "dog", "person"]
    make_tree(tmp_path / "VLCS", domains, classes)
    dataset = build_dataset("VLCS", tmp_path, 0, {"image_size": 8})
    assert dataset.environments == domains and dataset.num_classes == 5
    assert [len(env) for env in dataset.envs] == [20, 20, 20, 20]
    x, y = all_rows(dataset.envs[3])
    assert y.tolist() == [k for k in range(5) for _ in FILES]
    assert tuple(x[4 * 4, :, 0, 0].tolist()) == color(3, 4)  # VOC2007 / person / a.png
