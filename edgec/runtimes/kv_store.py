"""KV chunks on disk: one self-describing file per (layer, token range), never trusted blindly.

What users of disk KV tiers hit is wrong K/V served silently: files left by
another run, another model or a crash half-way through a write. So every file
carries a header (magic, version, model fingerprint, session, layer, token
range, dtype, shape, payload checksum), is written under a temporary name,
fsynced and renamed, lives in a folder keyed by its session, and is checked
in full before its contents reach the live cache. The folder goes when the
session closes.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import tempfile
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgec.errors import EdgecError

MAGIC = b"EDGECKV\0"
VERSION = 1
DTYPES = {"float32": 0, "float16": 1, "int8": 2}
LOCK = "owner.lock"
_HEADER = struct.Struct("<8sHB5x32s16sIQQIIQI4x")  # magic ver dtype | fingerprint session | layer start end kvh D payload crc


def sweep(base: Path) -> int:
    """Remove the folders of sessions whose process is gone (killed, crashed); a live one holds its lock."""
    removed = 0
    for d in base.glob("kvcache-*"):
        try:
            with open(d / LOCK, "r+") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
        except (BlockingIOError, FileNotFoundError, NotADirectoryError):
            continue
    return removed


class KVStoreError(EdgecError):
    """A chunk that cannot be trusted or a store that cannot take more."""


@dataclass(frozen=True)
class ChunkRef:
    """Where one chunk of one layer lives on disk; the header must say the same."""

    path: Path
    layer: int
    start: int
    end: int
    nbytes: int  # the whole file

    @property
    def name(self) -> str:
        return f"layer {self.layer}, tokens {self.start}-{self.end - 1} ({self.path})"


def encode(k: np.ndarray, v: np.ndarray, dtype: str) -> list[np.ndarray]:
    """k, v [kv_heads, tokens, D] float32 -> the payload's parts, contiguous, in file order: as is,
    float16, or int8 with one scale per (head, token) row for keys and values each."""
    if dtype in ("float32", "float16"):
        return [np.ascontiguousarray(x, np.float32 if dtype == "float32" else np.float16) for x in (k, v)]
    parts = []
    for x in (k, v):
        scale = np.maximum(np.abs(x).max(axis=-1, keepdims=True), 1e-30).astype(np.float32) / 127.0
        parts += [np.clip(np.rint(x / scale), -127, 127).astype(np.int8), scale]
    return parts


def decode(payload, dtype: str, kv_heads: int, tokens: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    n = kv_heads * tokens * dim
    if dtype in ("float32", "float16"):
        a = np.frombuffer(payload, np.float32 if dtype == "float32" else np.float16)
        k, v = a[:n], a[n:]
        return (k.reshape(kv_heads, tokens, dim).astype(np.float32, copy=False),
                v.reshape(kv_heads, tokens, dim).astype(np.float32, copy=False))
    out, offset = [], 0
    for _ in range(2):
        q = np.frombuffer(payload, np.int8, n, offset).reshape(kv_heads, tokens, dim)
        offset += n
        scale = np.frombuffer(payload, np.float32, kv_heads * tokens, offset).reshape(kv_heads, tokens, 1)
        offset += 4 * kv_heads * tokens
        out.append(q.astype(np.float32) * scale)
    return out[0], out[1]


def payload_size(dtype: str, kv_heads: int, tokens: int, dim: int) -> int:
    n = kv_heads * tokens * dim
    return 2 * {"float32": 4 * n, "float16": 2 * n, "int8": n + 4 * kv_heads * tokens}[dtype]


class ChunkStore:
    """The disk tier of one session: `root/kvcache-<session>/` holds its chunk files and nothing else.

    `fingerprint` (32 bytes) names the model and export the keys and values came from; a file
    with another fingerprint, session, layer, range, dtype or shape is refused.
    """

    def __init__(self, root: Path | None, fingerprint: bytes, dtype: str, kv_heads: int, dim: int):
        if dtype not in DTYPES:
            raise KVStoreError(f"unknown KV dtype '{dtype}': use one of {', '.join(DTYPES)}")
        self.session = uuid.uuid4().bytes
        self.key = self.session.hex()[:16]
        self._own_root = root is None
        base = Path(tempfile.mkdtemp(prefix="edgec-kv-")) if root is None else Path(root)
        try:
            base.mkdir(parents=True, exist_ok=True)
            self.dir = base / f"kvcache-{self.key}"
            self.dir.mkdir()
            # held while the session lives: a folder whose lock can be taken belongs to a dead process
            self._owner = open(self.dir / LOCK, "w")
            fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.swept = sweep(base)
        except OSError as e:
            raise KVStoreError(f"cannot create the KV folder in {base} ({e.strerror}): "
                               "give a writable --kv-dir") from e
        self.fingerprint = fingerprint.ljust(32, b"\0")[:32]
        self.dtype, self.kv_heads, self.dim = dtype, kv_heads, dim
        self.written = 0  # bytes now on disk
        self.closed = False

    def write(self, layer: int, start: int, k: np.ndarray, v: np.ndarray) -> ChunkRef:
        """Write atomically (temporary name, fsync, rename); a full disk leaves no partial file."""
        tokens = k.shape[1]
        parts = [memoryview(p).cast("B") for p in encode(k, v, self.dtype)]
        size, crc = sum(p.nbytes for p in parts), 0
        for p in parts:
            crc = zlib.crc32(p, crc)
        header = _HEADER.pack(MAGIC, VERSION, DTYPES[self.dtype], self.fingerprint, self.session, layer,
                              start, start + tokens, self.kv_heads, self.dim, size, crc)
        path = self.dir / f"{self.key}-L{layer:03d}-{start:09d}.kv"
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                for view in (memoryview(header), *parts):
                    while view:
                        view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno in (28, 122):  # ENOSPC, EDQUOT
                raise KVStoreError(f"the KV folder {self.dir.parent} is full after {self.written >> 20} MB of "
                                   "chunks: free space there, point --kv-dir elsewhere or raise --kv-budget") from e
            raise KVStoreError(f"cannot write KV chunk {path} ({e.strerror}): check --kv-dir") from e
        nbytes = _HEADER.size + size
        self.written += nbytes
        return ChunkRef(path, layer, start, start + tokens, nbytes)

    def read(self, ref: ChunkRef, buffer: bytearray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One sequential read, then every header field and the checksum checked; only then decoded.
        Into `buffer` (at least nbytes + 1 long) when given: float32 keys and values are views of it."""
        try:
            with open(ref.path, "rb", buffering=0) as f:
                if buffer is None:
                    data = f.read(ref.nbytes + 1)
                else:
                    data = memoryview(buffer)[:f.readinto(memoryview(buffer)[:ref.nbytes + 1])]
        except FileNotFoundError:
            raise KVStoreError(f"KV chunk missing: {ref.name}; the cache folder was changed while "
                               "generating, so this generation cannot go on") from None
        except OSError as e:
            raise KVStoreError(f"cannot read KV chunk {ref.name} ({e.strerror})") from e
        if len(data) != ref.nbytes:
            raise KVStoreError(f"KV chunk truncated or overwritten: {ref.name} has {len(data)} bytes, "
                               f"{ref.nbytes} were written")
        magic, version, dtype, fingerprint, session, layer, start, end, kvh, dim, size, crc = \
            _HEADER.unpack_from(data)
        problem = None
        if magic != MAGIC or version != VERSION:
            problem = "not an edgec KV chunk of this version"
        elif fingerprint != self.fingerprint:
            problem = "written for another model or export"
        elif session != self.session:
            problem = "written by another session"
        elif (layer, start, end) != (ref.layer, ref.start, ref.end):
            problem = f"holds layer {layer}, tokens {start}-{end - 1}"
        elif dtype != DTYPES[self.dtype] or (kvh, dim) != (self.kv_heads, self.dim) or \
                size != payload_size(self.dtype, kvh, end - start, dim) or _HEADER.size + size != len(data):
            problem = "dtype or shape differs from this cache's"
        payload = memoryview(data)[_HEADER.size:]
        if problem is None and zlib.crc32(payload) != crc:
            problem = "checksum mismatch (corrupted)"
        if problem is not None:
            raise KVStoreError(f"KV chunk refused: {ref.name}: {problem}")
        return decode(payload, self.dtype, kvh, end - start, dim)

    def evict_page_cache(self) -> None:
        """Ask the kernel to forget the cached pages of every chunk file, so the next reads hit the disk."""
        for entry in os.scandir(self.dir):
            if not entry.name.endswith(".kv"):
                continue
            fd = os.open(entry.path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._owner.close()
        shutil.rmtree(self.dir if not self._own_root else self.dir.parent, ignore_errors=True)
