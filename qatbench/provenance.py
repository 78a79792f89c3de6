"""Where a run's data came from, and whether the data on disk now is still that data.

A record carries its data root and, per environment it read, a fingerprint of the folder (or
file) behind it: the number of files, their total bytes and a hash of their sorted relative
names and sizes. `stale_reason` recomputes the fingerprint from the disk and says what changed,
so that a results folder pointed at another copy of a dataset (a corrupted one, a re-download
with files missing) does not pass its old runs off as finished runs of this data.

The fingerprint stats every file, as the image cache's key already does, and reads no file's
contents: about 0.1 s for PACS's 10k files. It is never kept on disk, since a stored fingerprint
would have to be checked against the disk to be trusted, which is the same stat of every file;
a `FingerprintCache` shares it among the records of one `status` or `report`.

The report imports this module and must stay torch-free: standard library only.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

EMBEDDED = "embedded"  # data_root of the datasets generated in code (RotatedMNIST, ColoredMNIST)
ROOT_KEY = "data_root"
FINGERPRINTS_KEY = "data_fingerprints"  # [{env, source, files, bytes, hash}, ...], one per environment


def fingerprint(path: Path) -> dict[str, Any]:
    """{files, bytes, hash} of every file under `path` (or of the file `path`); names starting with
    a dot (locks, temporary files, caches) are left out. A missing path is 0 files."""
    path = Path(path)
    entries: list[tuple[str, int]] = []
    if path.is_file():
        entries.append((path.name, path.stat().st_size))
    elif path.is_dir():
        for folder, subfolders, files in os.walk(path, followlinks=True):
            subfolders[:] = [d for d in subfolders if not d.startswith(".")]
            for name in files:
                if name.startswith("."):
                    continue
                full = os.path.join(folder, name)
                try:
                    entries.append((os.path.relpath(full, path).replace(os.sep, "/"), os.stat(full).st_size))
                except OSError:  # a dangling link: a file the loader cannot read either
                    entries.append((os.path.relpath(full, path).replace(os.sep, "/"), -1))
    entries.sort()
    digest = hashlib.sha256()
    for name, size in entries:
        digest.update(f"{name}\t{size}\n".encode())
    return {"files": len(entries), "bytes": sum(max(size, 0) for _, size in entries), "hash": digest.hexdigest()[:16]}


def provenance(sources: Mapping[str, Path], root: Path | None) -> dict[str, Any]:
    """The record's data part: the root, and a fingerprint per environment's source (relative to the
    root when under it). No root: the data is generated in code ("embedded")."""
    if root is None:
        return {ROOT_KEY: EMBEDDED, FINGERPRINTS_KEY: []}
    root = Path(root).resolve()
    prints = []
    for env, source in sources.items():
        source = Path(source).resolve()
        relative = os.path.relpath(source, root)
        prints.append({"env": env, "source": relative.replace(os.sep, "/"), **fingerprint(source)})
    return {ROOT_KEY: str(root), FINGERPRINTS_KEY: prints}


class FingerprintCache:
    """Fingerprints by absolute path, each computed once for one pass over many records."""

    def __init__(self):
        self._prints: dict[Path, dict[str, Any]] = {}

    def __call__(self, path: Path) -> dict[str, Any]:
        path = Path(path).resolve()
        if path not in self._prints:
            self._prints[path] = fingerprint(path)
        return self._prints[path]


def stale_reason(
    record: Mapping[str, Any], root: Path | None = None, cache: FingerprintCache | None = None
) -> str | None:
    """What differs between the data a finished record read and the data under `root` now (the
    record's own data root when None), or None when nothing does, the data is embedded, or the
    record predates fingerprints (nothing to compare)."""
    prints = record.get(FINGERPRINTS_KEY)
    recorded_root = record.get(ROOT_KEY)
    if not isinstance(prints, list) or not prints or recorded_root in (None, EMBEDDED):
        return None
    base = Path(root) if root is not None else Path(str(recorded_root))
    cache = cache or FingerprintCache()
    changes = []
    for entry in prints:
        if not isinstance(entry, dict) or "source" not in entry:
            continue
        now = cache(base / str(entry["source"]))
        if now["hash"] == entry.get("hash"):
            continue
        if now["files"] == 0:
            changes.append(f"{entry.get('env')}: {base / str(entry['source'])} is missing or empty")
        else:
            changes.append(
                f"{entry.get('env')}: {entry.get('files')} files, {entry.get('bytes')} bytes then; "
                f"{now['files']} files, {now['bytes']} bytes now"
            )
    return "; ".join(changes) or None
