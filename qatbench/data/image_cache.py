"""Decode every image once, into a uint8 array on disk that later epochs and later runs map.

JPEG decoding at 224 px costs more than a training step on a small GPU budget, and a sweep
reads the same images hundreds of times. So a list of image files is decoded once, resized to
the run's image size, and stored as `<key>.images.npy` (N, 3, S, S) uint8 beside
`<key>.labels.npy` and a `<key>.json` sidecar written last (its presence means the cache is
complete). The key hashes the files' paths, sizes and modification times, the size and the
fit, so editing, adding or removing a file makes a new cache instead of serving stale pixels.

The folder is `$QATBENCH_CACHE`, else `$XDG_CACHE_HOME/qatbench/images` (`~/.cache/...`);
`QATBENCH_CACHE=off` decodes into memory each time. Unreadable files are skipped and listed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F
from tqdm.auto import tqdm

from qatbench.errors import UserError

log = logging.getLogger(__name__)

try:  # torchvision's decoders (3x faster than PIL here) are deprecated since 0.29 for TorchCodec
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")
    from torchvision.io import ImageReadMode, decode_image
except ImportError:  # pragma: no cover  (a torchvision without them: PIL decodes everything)
    decode_image = None

CACHE_ENV = "QATBENCH_CACHE"
FORMAT_VERSION = 2  # 2: 16-bit PNGs scaled to 8 bits
Fit = Literal["squash", "center"]  # Resize((s, s)) as DomainBed; or Resize(s * 256/224) + CenterCrop(s)


@dataclass
class DecodedImages:
    images: np.ndarray  # (N, 3, S, S) uint8; rows of skipped files are zero
    labels: np.ndarray  # (N,) int64
    readable: np.ndarray  # indices of the rows that hold a decoded image
    skipped: list[str]  # paths of files that could not be decoded
    from_cache: bool


def cache_folder() -> Path | None:
    value = os.environ.get(CACHE_ENV, "")
    if value.lower() in ("off", "0", "none", "memory"):
        return None
    if value:
        return Path(value).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "qatbench" / "images"


def cache_key(files: Sequence[tuple[Path, int]], size: int, fit: Fit) -> str:
    digest = hashlib.sha256(f"v{FORMAT_VERSION} {size} {fit}\n".encode())
    for path, label in files:
        stat = os.stat(path)
        digest.update(f"{os.path.abspath(path)}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def load_images(files: Sequence[tuple[Path, int]], size: int, fit: Fit = "squash", desc: str = "") -> DecodedImages:
    """The decoded images of `files` ((path, label) pairs), from the cache when it has them."""
    folder = cache_folder()
    if folder is None:
        return _decode_all(files, size, fit, desc, out=None)
    key = cache_key(files, size, fit)
    sidecar = folder / f"{key}.json"
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text())
            images = np.load(folder / f"{key}.images.npy", mmap_mode="r")
            labels = np.load(folder / f"{key}.labels.npy")
            if images.shape == (len(files), 3, size, size) and len(labels) == len(files):
                readable = np.asarray(meta["readable"], dtype=np.int64)
                return DecodedImages(images, labels, readable, meta["skipped"], True)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("image cache %s is unreadable (%s); decoding again", sidecar, exc)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe.{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"${CACHE_ENV}: cannot write the image cache to {folder} ({exc.strerror or exc}); "
            f"set {CACHE_ENV} to a writable folder, or to off to decode in memory"
        ) from None
    tmp = folder / f"{key}.images.npy.{os.getpid()}.tmp"
    decoded = _decode_all(files, size, fit, desc, out=tmp)
    os.replace(tmp, folder / f"{key}.images.npy")
    _save_npy(folder / f"{key}.labels.npy", decoded.labels)
    meta = {"files": len(files), "size": size, "fit": fit, "readable": decoded.readable.tolist()}
    _atomic_write(sidecar, json.dumps({**meta, "skipped": decoded.skipped, "source": desc}).encode())
    decoded.images = np.load(folder / f"{key}.images.npy", mmap_mode="r")
    return decoded


def decode(path: Path, size: int, fit: Fit = "squash") -> torch.Tensor:
    """One file as a (3, size, size) uint8 tensor; raises on files that no decoder can read."""
    try:
        if decode_image is None:
            raise ValueError("no torchvision decoder")
        image = decode_image(str(path), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):  # formats torchvision cannot decode (BMP, TIFF): PIL
        with Image.open(path) as pil:
            image = F.pil_to_tensor(pil.convert("RGB"))
    if image.dtype != torch.uint8:  # 16-bit PNG
        image = F.to_dtype(image, torch.uint8, scale=True)
    if fit == "squash":
        return F.resize(image, [size, size], antialias=True)
    image = F.resize(image, round(size * 256 / 224), antialias=True)
    return F.center_crop(image, [size, size])


def _decode_all(files, size: int, fit: Fit, desc: str, out: Path | None) -> DecodedImages:
    shape = (len(files), 3, size, size)
    if out is None:
        images = np.zeros(shape, dtype=np.uint8)
    else:
        images = np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=shape)
    labels = np.asarray([label for _, label in files], dtype=np.int64)
    skipped: list[str] = []

    def one(i: int) -> str | None:
        path = files[i][0]
        try:
            images[i] = decode(path, size, fit).numpy()
        except Exception as exc:  # noqa: BLE001  (a corrupt file is skipped and reported, not fatal)
            return f"{path} ({type(exc).__name__})"
        return None

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(one, range(len(files)), chunksize=64)
        bar = tqdm(results, total=len(files), desc=f"decoding {desc}", unit="img", leave=False, disable=None)
        failures = list(bar)
    skipped = [f for f in failures if f is not None]
    readable = np.asarray([i for i, f in enumerate(failures) if f is None], dtype=np.int64)
    if skipped:
        log.warning("%s: skipped %d unreadable image(s): %s", desc, len(skipped), "; ".join(skipped[:5]))
    if out is not None:
        images.flush()
        del images
        images = None
    return DecodedImages(images, labels, readable, skipped, False)


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
