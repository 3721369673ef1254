"""The decoded-clip cache: one flat uint8 array file per preprocessing setting plus an index, read clip by clip, so
memory does not grow with the number of clips and a warm start reads no clip at all.

    <cache_dir>/clips-<key of the settings>/
        clips-<id>.u8  records of T*H*W*3 bytes, appended, never rewritten (index.json names the file)
        index.json   rows by content hash (with a flag for clips whose frames are all the same), and the fast path:
                     absolute file path -> (size, mtime_ns, content hash), so unchanged files are not re-hashed on
                     every start (a file reached by another path is hashed once more, then found by content)
        .lock        held while the store is written (runs sharing a cache take turns)

Content-keyed: a renamed or copied file finds its row by hash, a file changed in place gets a new one. Crash-safe:
new records are appended and flushed to disk before index.json is atomically replaced, a reader trusts only the rows
the index names, and a writer first cuts the array file back to the length the index covers, so the bytes of an
interrupted build are never read. An index that cannot be trusted (unreadable, or naming more rows than its file
holds) starts a new array file rather than rewriting the old one, which a run still reading it keeps using. Rows
are read with positioned reads (os.pread) rather than a memory map: pages of a mapped file that a long epoch touches
count in the process's resident memory, the page cache's do not.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import uuid

import numpy as np
import torch

from utils.atomic import atomic_write

STORE_VERSION = 1  # bump when the layout changes; the settings key already covers preprocessing changes
HASH_CHUNK = 1 << 20
FLUSH_EVERY = 256  # clips decoded between appends: bounds the memory of a large first build


def content_hash(path: str) -> str:
    """sha1 of a file's bytes, read in chunks (videos can be large)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


class ClipStore:
    """The store of one preprocessing setting: clips of `shape` (T, H, W, 3) by content hash."""

    def __init__(self, cache_dir: str, settings: str, shape: tuple[int, ...]):
        key = hashlib.sha1(f"text2sign-store-v{STORE_VERSION}|{settings}|{shape}".encode()).hexdigest()[:16]
        self.root = os.path.join(cache_dir, f"clips-{key}")
        self.shape, self.record_bytes = tuple(shape), int(np.prod(shape))
        self.index_path = os.path.join(self.root, "index.json")
        self.index = self._load_index()
        self._pending: list[tuple[str, bytes, bool]] = []
        self._new_stats: dict[str, list] = {}
        self._fd: int | None = None

    def _load_index(self) -> dict:
        empty = {"version": STORE_VERSION, "shape": list(self.shape), "array": f"clips-{uuid.uuid4().hex[:12]}.u8",
                 "rows": 0, "by_hash": {}, "constant": [], "failed": {}, "by_stat": {}}
        try:
            with open(self.index_path, encoding="utf-8") as f:
                index = json.load(f)
        except (OSError, ValueError):
            return empty
        if not (isinstance(index, dict) and index.get("version") == STORE_VERSION
                and index.get("shape") == list(self.shape)):
            return empty
        array = os.path.join(self.root, index["array"])
        have = os.path.getsize(array) if os.path.exists(array) else 0
        return index if have >= index["rows"] * self.record_bytes else empty

    @property
    def array_path(self) -> str:
        return os.path.join(self.root, self.index["array"])

    # ---------------------------------------------------------------------------------------------- lookup

    def stat_hash(self, path: str) -> str | None:
        """The content hash recorded for path if its size and mtime are unchanged (no read), else None."""
        st = os.stat(path)
        known = self.index["by_stat"].get(os.path.abspath(path))
        return known[2] if known and known[0] == st.st_size and known[1] == st.st_mtime_ns else None

    def remember(self, path: str, digest: str) -> None:
        """Record path's size and mtime with its content hash (written at the next commit)."""
        st = os.stat(path)
        entry = [st.st_size, st.st_mtime_ns, digest]
        self.index["by_stat"][os.path.abspath(path)] = self._new_stats[os.path.abspath(path)] = entry

    @property
    def needs_writing(self) -> bool:
        return bool(self._new_stats)

    def row(self, digest: str) -> int | None:
        return self.index["by_hash"].get(digest)

    def failure(self, digest: str) -> str | None:
        """Why the file with this content could not be decoded under these settings (not retried), or None."""
        return self.index["failed"].get(digest)

    def fail(self, digest: str, why: str) -> None:
        """Record a file that does not decode (under the lock), so warm starts skip it without decoding again."""
        self.index["failed"][digest] = why

    def constant_rows(self) -> set[int]:
        """Rows of clips whose frames are all the same (flagged when stored, so no start-up reads a clip)."""
        return set(self.index["constant"])

    # ---------------------------------------------------------------------------------------------- writing

    def __enter__(self) -> "ClipStore":
        """Hold the store's lock and re-read the index (another run may have added rows meanwhile)."""
        os.makedirs(self.root, exist_ok=True)
        self._lock = open(os.path.join(self.root, ".lock"), "a")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.index = self._load_index()
        self.index["by_stat"].update(self._new_stats)
        for name in os.listdir(self.root):  # arrays no index names: an untrusted one replaced (open readers keep it)
            if name.startswith("clips-") and name.endswith(".u8") and name != self.index["array"]:
                os.remove(os.path.join(self.root, name))
        return self

    def add(self, digest: str, clip: np.ndarray, constant: bool) -> int:
        """Append a decoded clip (under the lock); its row is readable once the with-block ends."""
        if clip.dtype != np.uint8 or clip.shape != self.shape:
            raise ValueError(f"clip {clip.dtype} {clip.shape} does not fit a store of uint8 {self.shape}")
        if digest in self.index["by_hash"]:
            return self.index["by_hash"][digest]
        row = self.index["rows"] + len(self._pending)
        self._pending.append((digest, np.ascontiguousarray(clip).tobytes(), constant))
        if len(self._pending) >= FLUSH_EVERY:
            self._flush()
        return row

    def _flush(self) -> None:
        """Append the pending clips, flush them to disk, then publish them in the index."""
        if self._pending:
            start = self.index["rows"] * self.record_bytes
            with open(self.array_path, "ab") as f:
                f.truncate(start)  # cut off what an interrupted build left beyond the index
                for _, data, _ in self._pending:
                    f.write(data)
                f.flush()
                os.fsync(f.fileno())
            for digest, _, constant in self._pending:
                self.index["by_hash"][digest] = self.index["rows"]
                if constant:
                    self.index["constant"].append(self.index["rows"])
                self.index["rows"] += 1
            self._pending.clear()
        with atomic_write(self.index_path, "w") as f:
            json.dump(self.index, f, separators=(",", ":"))
        self._new_stats.clear()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._flush()
            else:
                self._pending.clear()  # an interrupted build publishes nothing more
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    # ---------------------------------------------------------------------------------------------- reading

    def read(self, rows) -> np.ndarray:
        """Clips at rows (a sequence of ints): uint8 (len(rows), T, H, W, 3), a fresh array (no mapping)."""
        if self._fd is None:
            self._fd = os.open(self.array_path, os.O_RDONLY)
        out = np.empty((len(rows), *self.shape), dtype=np.uint8)
        flat = out.reshape(len(rows), -1)
        for k, row in enumerate(rows):
            data = os.pread(self._fd, self.record_bytes, int(row) * self.record_bytes)
            if len(data) != self.record_bytes:
                raise OSError(f"clip cache {self.array_path} is shorter than its index says (row {row})")
            flat[k] = np.frombuffer(data, dtype=np.uint8)
        return out

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


class ClipView:
    """A data set's clips in the store, read on indexing: view[i] is (T, H, W, 3), view[indices] and view[a:b] are
    (B, T, H, W, 3), uint8 tensors that own their memory."""

    def __init__(self, store: ClipStore, rows: list[int]):
        self.store, self.rows = store, np.asarray(rows, dtype=np.int64)

    dtype = torch.uint8

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.store.shape)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, slice):
            return torch.from_numpy(self.store.read(self.rows[idx]))
        idx = torch.as_tensor(idx, dtype=torch.long)
        rows = self.rows[idx.reshape(-1).numpy()]
        return torch.from_numpy(self.store.read(rows)).reshape(*idx.shape, *self.store.shape)
