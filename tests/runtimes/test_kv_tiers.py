"""The tiered KV cache on its own: exact attention over every tier, spill and reload, Quest selection, and
every way a disk chunk can go wrong."""

import os
import shutil
import subprocess

import numpy as np
import pytest
from helpers import tmpfs

from edgec.errors import InputError
from edgec.runtimes.kv_store import KVStoreError
from edgec.runtimes.kv_tiers import KVOptions, TieredKV

LAYERS = [{"heads": 4, "kv_heads": 2, "head_dim": 8}] * 2
FP = b"model-a"


def attention(q, k, v, start):
    """Reference: q [heads, S, D] at positions start.. over k/v [kvh, T, D], causal, GQA by repetition."""
    heads, s, d = q.shape
    g = heads // k.shape[0]
    k, v = np.repeat(k, g, 0), np.repeat(v, g, 0)
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(d)
    scores[:, np.arange(start, start + s)[:, None] < np.arange(k.shape[1])[None, :]] = -np.inf
    p = np.exp(scores - scores.max(-1, keepdims=True))
    return ((p / p.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(s, heads * d)


def run(cache, data, steps):
    """Prefill data's first tokens in one step, then one token per step; the context of every step."""
    ks, vs, qs = data
    total, out, start = ks.shape[2], [], 0
    for s in steps:
        cache.begin_step(s)
        for i in range(len(LAYERS)):
            cache.append(i, ks[i][:, start:start + s], vs[i][:, start:start + s], start)
            out.append((i, start, s, cache.attend(i, qs[i][:, start:start + s], start)))
        cache.end_step()
        start += s
    assert start == total
    return out


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    t = 150
    return (rng.standard_normal((2, 2, t, 8)).astype(np.float32), rng.standard_normal((2, 2, t, 8)).astype(np.float32),
            rng.standard_normal((2, 4, t, 8)).astype(np.float32))


STEPS = [100] + [1] * 50
SMALL = dict(budget=40_000, chunk=8, io_threads=2)  # room for about 3 chunks per layer: most go out


@pytest.mark.parametrize("options", [KVOptions(chunk=8), KVOptions("host", **SMALL), KVOptions("disk", **SMALL),
                                     KVOptions("disk", overlap=False, keep_hot=False, **SMALL)],
                         ids=["memory", "host", "disk", "disk-naive"])
def test_exact_equals_full_attention_in_every_tier(tmp_path, data, options):
    options = KVOptions(**{**options.__dict__, "dir": tmp_path})
    cache = TieredKV(LAYERS, options, FP, 150)
    try:
        for i, start, s, ctx in run(cache, data, STEPS):
            want = attention(data[2][i][:, start:start + s], data[0][i][:, :start + s], data[1][i][:, :start + s], start)
            np.testing.assert_allclose(ctx, want, atol=2e-5)
        if options.offload != "none":
            assert cache.stats.chunks_spilled > 10 and cache.stats.chunks_read > 0
    finally:
        cache.close()


def test_spill_and_reload_gives_back_what_went_out(tmp_path, data):
    cache = TieredKV(LAYERS, KVOptions("disk", dir=tmp_path, **SMALL), FP, 150)
    run(cache, data, STEPS)
    files = list(cache.store.dir.glob("*.kv"))
    resident = [c for c in cache.layers[0].chunks if c.slot is not None]
    assert len(files) == 2 * (len(cache.layers[0].chunks) - len(resident)) > 0
    assert resident[0].start == 0  # the attention sink stays in memory
    for i in range(2):
        k, v = cache.contents(i)
        np.testing.assert_array_equal(k, data[0][i])
        np.testing.assert_array_equal(v, data[1][i])
    cache.close()
    assert list(tmp_path.iterdir()) == []


def test_float16_and_int8_chunks_are_close_and_smaller(tmp_path, data):
    caches = {d: TieredKV(LAYERS, KVOptions("host", dtype=d, **SMALL), FP, 150) for d in ("float32", "float16", "int8")}
    outs = {d: run(c, data, STEPS) for d, c in caches.items()}
    for (_, _, _, a), (_, _, _, h), (_, _, _, b) in zip(outs["float32"], outs["float16"], outs["int8"]):
        np.testing.assert_allclose(a, h, atol=2e-3)
        np.testing.assert_allclose(a, b, atol=0.05)
    host = {d: sum(len(ch.host) for ch in c.layers[0].chunks if ch.host) for d, c in caches.items()}
    assert host["float16"] == host["float32"] // 2
    assert host["int8"] < 0.4 * host["float32"]  # 8 int8 + one float32 scale per 8 floats


def test_topk_reads_the_chunk_whose_keys_match_the_query(tmp_path):
    """One chunk in the middle holds keys aligned with the query: top-1 must pick it and skip the rest."""
    rng = np.random.default_rng(1)
    layers = [{"heads": 2, "kv_heads": 1, "head_dim": 8}]
    c, n = 8, 80
    k = 0.1 * rng.standard_normal((1, n, 8)).astype(np.float32)
    v = rng.standard_normal((1, n, 8)).astype(np.float32)
    q = np.zeros((2, 1, 8), np.float32)
    q[:, 0, 0] = 4.0
    k[0, 40:48, 0] = 3.0  # chunk 5 of 10
    cache = TieredKV(layers, KVOptions("disk", policy="topk", topk=1, chunk=c, budget=30_000, io_threads=2,
                                       dir=tmp_path), FP, n + 1)
    cache.append(0, k, v, 0)
    before = cache.stats.chunks_read
    cache.begin_step(1)
    cache.append(0, np.zeros((1, 1, 8), np.float32), np.zeros((1, 1, 8), np.float32), n)
    got = cache.attend(0, q, n)
    # sink (chunk 0), recent (chunk 9), the new token, and chunk 5: nothing else
    keep = np.r_[0:8, 40:48, 72:80]
    full_k = np.concatenate([k, np.zeros((1, 1, 8), np.float32)], 1)[:, np.r_[keep, n]]
    full_v = np.concatenate([v, np.zeros((1, 1, 8), np.float32)], 1)[:, np.r_[keep, n]]
    want = attention(q, full_k, full_v, full_k.shape[1] - 1)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert cache.stats.chunks_read - before <= 3  # of 9 chunks on disk
    cache.close()


@pytest.fixture
def spilled(tmp_path, data):
    cache = TieredKV(LAYERS, KVOptions("disk", dir=tmp_path, **SMALL), FP, 151)
    run(cache, data, STEPS)
    chunk = next(c for c in cache.layers[1].chunks if c.ref is not None)
    yield cache, chunk
    cache.close()


def _attend(cache):
    cache.begin_step(1)
    q = np.ones((4, 1, 8), np.float32)
    for i in range(2):
        cache.append(i, np.zeros((2, 1, 8), np.float32), np.zeros((2, 1, 8), np.float32), 150)
        cache.attend(i, q, 150)


@pytest.mark.parametrize("damage", ["missing", "truncated", "corrupted", "other model", "other session"])
def test_a_bad_chunk_is_refused_by_name(spilled, damage, tmp_path):
    cache, chunk = spilled
    path = chunk.ref.path
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-10])
    elif damage == "corrupted":
        data = bytearray(path.read_bytes())
        data[-5] ^= 0x40
        path.write_bytes(bytes(data))
    else:  # the same layer and tokens, written by another session of another (or the same) model
        other = TieredKV(LAYERS, KVOptions("disk", **{**SMALL, "dir": tmp_path / "o"}),
                         b"model-b" if damage == "other model" else FP, 151)
        c = next(c for c in cache.layers[1].chunks if c is chunk)
        k, v = cache._load(1, c)
        ref = other.store.write(1, c.start, k, v)
        shutil.copyfile(ref.path, path)
        other.close()
    with pytest.raises(KVStoreError) as e:
        _attend(cache)
    message = str(e.value)
    assert f"layer 1, tokens {chunk.start}-{chunk.end - 1}" in message and "\n" not in message
    assert {"missing": "missing", "truncated": "truncated", "corrupted": "checksum", "other model": "another model",
            "other session": "another session"}[damage] in message


def test_sessions_on_one_folder_keep_apart_and_clean_up(tmp_path, data):
    a = TieredKV(LAYERS, KVOptions("disk", dir=tmp_path, **SMALL), FP, 150)
    b = TieredKV(LAYERS, KVOptions("disk", dir=tmp_path, **SMALL), FP, 150)
    assert a.store.dir != b.store.dir and a.store.dir.parent == b.store.dir.parent == tmp_path
    run(a, data, STEPS)
    run(b, (data[0] * 2, data[1], data[2]), STEPS)
    assert np.array_equal(a.contents(0)[0], data[0][0]) and np.array_equal(b.contents(0)[0], 2 * data[0][0])
    a.close()
    assert [p.name for p in tmp_path.iterdir()] == [b.store.dir.name]
    b.close()
    assert list(tmp_path.iterdir()) == []


def test_a_dead_sessions_folder_is_removed_by_the_next_session(tmp_path):
    """A process killed with SIGKILL cannot clean up; the next session on the folder does."""
    code = ("from edgec.runtimes.kv_tiers import KVOptions, TieredKV; import os, sys; "
            f"c = TieredKV({LAYERS!r}, KVOptions('disk', dir=sys.argv[1], budget=40000, chunk=8, io_threads=2), "
            "b'x', 64); print(c.store.dir, flush=True); os.kill(os.getpid(), 9)")
    proc = subprocess.run([os.sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == -9 and len(list(tmp_path.glob("kvcache-*"))) == 1
    cache = TieredKV(LAYERS, KVOptions("disk", dir=tmp_path, **SMALL), FP, 64)
    assert cache.store.swept == 1 and [p.name for p in tmp_path.iterdir()] == [cache.store.dir.name]
    cache.close()


def test_a_full_disk_is_a_clear_error_and_leaves_nothing(small_tmpfs, data):
    cache = TieredKV(LAYERS, KVOptions("disk", dir=small_tmpfs, **SMALL), FP, 150)
    with pytest.raises(KVStoreError, match="is full") as e:
        try:
            run(cache, tuple(np.tile(x, (1, 1, 1, 1)) for x in data), STEPS)
        finally:
            cache.close()
    assert "\n" not in str(e.value)
    assert list(small_tmpfs.iterdir()) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    yield from tmpfs(tmp_path / "small", "16k")  # a few 4-KB chunk files fit, the 150-token cache does not


def test_bad_options_are_one_line_errors():
    with pytest.raises(InputError, match="needs --kv-budget"):
        TieredKV(LAYERS, KVOptions("disk"), FP, 100)
    with pytest.raises(InputError, match="too small"):
        TieredKV(LAYERS, KVOptions("disk", budget=1000), FP, 100)
    with pytest.raises(InputError, match="--kv-dtype applies"):
        TieredKV(LAYERS, KVOptions(dtype="int8"), FP, 100)
