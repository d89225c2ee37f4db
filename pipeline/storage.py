"""Every fsspec call of the pipeline: listing datasets, opening inputs, and the output `Store`
with the two write primitives the commit protocol is built on.

URLs: ``file://...``, a plain path, ``s3://``, ``gs://``, ``memory://`` — anything fsspec knows.
storage_options go to the filesystem (e.g. ``endpoint_url`` for an S3-compatible server);
credentials come from the environment, as the provider's SDK reads them.

Write primitives (what each guarantees when the process is killed at any instant):

- `Store.write_new(rel, data)`: an object that is either absent or whole under its final name.
  Local: written to a hidden temp name in the same folder, then renamed. Object stores: one PUT
  (single or multipart), which is atomic by itself.
- `Store.put_if_absent(rel, data) -> bool`: like write_new, and refused (False) when the name
  already exists, so two writers never both win. Local: temp file + ``os.link`` (fails if the
  target exists). S3/GCS: a conditional PUT (``If-None-Match: *`` / generation 0) through
  fsspec's ``mode="create"``. memory:// is single-process and checks, then writes.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from fsspec.core import url_to_fs

_GLOB_CHARS = "*?["
TEMP_PREFIX = "."  # hidden temp files: readers skip names starting with this


@dataclass(frozen=True)
class InputFile:
    """One file of a dataset. url reopens it; name is its path relative to the dataset root
    (part of the stable row ids, so moving the dataset does not change them); size in bytes."""

    url: str
    name: str
    size: int


def _fs(url: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    return url_to_fs(url, **(storage_options or {}))


def list_dataset(
    url: str, suffixes: tuple[str, ...], storage_options: dict[str, Any] | None = None
) -> list[InputFile]:
    """The files of a dataset, sorted by name: the file itself, every file under a folder
    (recursively) whose name ends with one of suffixes, or every match of a glob.

    Raises FileNotFoundError when nothing matches, naming the URL.
    """
    fs, path = _fs(url, storage_options)
    if any(c in path for c in _GLOB_CHARS):
        root = path[: min(path.index(c) for c in _GLOB_CHARS if c in path)].rsplit("/", 1)[0]
        found = fs.glob(path, detail=True)
        entries = {p: info for p, info in found.items() if info.get("type") == "file"}
    elif fs.isdir(path):
        root = path.rstrip("/")
        entries = {
            p: info
            for p, info in fs.find(path, detail=True).items()
            if p.endswith(suffixes) and not _is_hidden(p, root)
        }
    elif fs.isfile(path):
        root = path.rsplit("/", 1)[0] if "/" in path else ""
        entries = {path: fs.info(path)}
    else:
        raise FileNotFoundError(f"input {url!r}: no such file, folder or glob match")
    if not entries:
        raise FileNotFoundError(f"input {url!r}: no files ending with {', '.join(suffixes)} found")
    files = []
    for p in sorted(entries):
        name = p[len(root) :].lstrip("/") if root and p.startswith(root) else p
        files.append(InputFile(fs.unstrip_protocol(p), name, int(entries[p].get("size") or 0)))
    return files


def _is_hidden(path: str, root: str) -> bool:
    rel = path[len(root) :].lstrip("/")
    return any(part.startswith((".", "_")) for part in rel.split("/"))


@contextmanager
def open_input(url: str, storage_options: dict[str, Any] | None = None) -> Iterator[IO[bytes]]:
    """A binary, seekable, read-only file object for one input file; closed on exit."""
    fs, path = _fs(url, storage_options)
    with fs.open(path, "rb") as handle:
        yield handle


class Store:
    """A folder (prefix) on one filesystem, addressed by relative '/'-separated names."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.fs, root = _fs(url, storage_options)
        self.root = root.rstrip("/")
        self.is_local = "file" in _protocols(self.fs)
        self.is_memory = "memory" in _protocols(self.fs)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def full_url(self, rel: str) -> str:
        return self.fs.unstrip_protocol(self.path(rel))

    def exists(self, rel: str) -> bool:
        """Asks the store itself (another process may have written rel since a listing)."""
        self.fs.invalidate_cache(self.path(rel))
        return bool(self.fs.exists(self.path(rel)))

    def read_bytes(self, rel: str) -> bytes:
        return bytes(self.fs.cat_file(self.path(rel)))

    def list_names(self, rel_dir: str) -> list[str]:
        """Names of the files directly in rel_dir, sorted, hidden temp files left out; [] when
        the folder does not exist. Never served from a listing cache."""
        self.fs.invalidate_cache(self.path(rel_dir))
        try:
            entries = self.fs.ls(self.path(rel_dir), detail=True)
        except FileNotFoundError:
            return []
        names = (e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "file")
        return sorted(n for n in names if not n.startswith(TEMP_PREFIX))

    def write_new(self, rel: str, data: bytes) -> None:
        """Write data so that rel is either absent or whole at any instant; replaces rel."""
        path = self.path(rel)
        if self.is_local:
            tmp = self._local_temp(path, data)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)

    def put_if_absent(self, rel: str, data: bytes) -> bool:
        """Create rel holding data unless it exists; True if this call created it. Atomic:
        of concurrent callers exactly one wins, and rel is never seen half-written."""
        path = self.path(rel)
        if self.is_local:
            tmp = self._local_temp(path, data)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
            return True
        if self.is_memory:
            if self.fs.exists(path):
                return False
            self.fs.pipe_file(path, data)
            return True
        try:
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        except OSError as exc:
            # Some servers answer a failed precondition without naming it; if the object is
            # there now, somebody else created it first.
            self.fs.invalidate_cache(path)
            if exc.errno in (errno.EINVAL, errno.EEXIST) and self.fs.exists(path):
                return False
            raise
        return True

    def delete(self, rel: str) -> None:
        """Remove a file or a whole folder; a missing one is not an error."""
        path = self.path(rel)
        self.fs.invalidate_cache(path)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
        self.fs.invalidate_cache(path)

    def _local_temp(self, path: str, data: bytes) -> str:
        folder, name = path.rsplit("/", 1)
        os.makedirs(folder, exist_ok=True)
        tmp = f"{folder}/{TEMP_PREFIX}{name}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return tmp


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)
