"""Tests of logit cache format version 2: views axis, replay parameters, top-k storage,
and reading version-1 files."""

from __future__ import annotations

import json
import math
import zlib

import h5py
import numpy as np
import pytest

from dass_distill.logit_cache import CacheFormatError, LogitCacheReader, LogitCacheWriter
from dass_distill.logit_cache.format import VIEW_PARAMS_DTYPE
from dass_distill.logit_cache.storage import (
    DenseStorage,
    TopKStorage,
    index_bits,
    pack_indices,
    storage_from_attr,
    storage_from_spec,
    unpack_indices,
)

N, C = 23, 13
CHUNK = 4  # 23 rows -> 6 chunks, the last one partial
K = 4
AUGMENT = {"mixup": {"p": 0.5, "alpha": 10.0}, "gain_db": [-6, 6], "shift": True, "specaugment": {"freq": 24}}
CREATED = "2025-01-31T12:00:00Z"


def clip_ids(n: int = N) -> list[str]:
    return [f"Y{i:05d}_v2-é" for i in range(n)]


def labels(c: int = C) -> tuple[list[str], list[str]]:
    return [f"/m/{i:04x}" for i in range(c)], [f"Label {i}" for i in range(c)]


def fp16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).astype(np.float16).astype(np.float32)


def random_params(rng: np.random.Generator, n: int, v: int, num_rows: int = N) -> np.ndarray:
    p = np.zeros((n, v), dtype=VIEW_PARAMS_DTYPE)
    p["partner"] = rng.integers(-1, num_rows, size=(n, v))
    p["partner"][:, 0] = -1  # at least one view without mixup
    p["partner"][0, -1] = num_rows - 1  # the last row as a partner
    p["lam"] = np.where(p["partner"] < 0, 1.0, rng.uniform(0.5, 1.0, size=(n, v)))
    p["gain_db"] = rng.uniform(-6, 6, size=(n, v))
    p["shift"] = rng.integers(-500, 500, size=(n, v))
    p["freq_start"] = rng.integers(0, 128, size=(n, v))
    p["freq_width"] = rng.integers(0, 25, size=(n, v))
    p["time_start"] = rng.integers(0, 1000, size=(n, v))
    p["time_width"] = rng.integers(0, 60000, size=(n, v))  # beyond int16: the field really is u2
    return p


def softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def logsumexp(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))[..., 0]


# -- bit packing -------------------------------------------------------------------------


def test_index_bits():
    assert [index_bits(c) for c in (1, 2, 3, 4, 5, 527, 1024, 1025)] == [1, 1, 2, 2, 3, 10, 10, 11]
    for c in range(2, 70_000, 37):
        b = index_bits(c)
        assert (c - 1) < 2**b and (c <= 2 or (c - 1) >= 2 ** (b - 1)), c
        assert b == (c - 1).bit_length()


@pytest.mark.parametrize("bits", range(1, 17))
def test_pack_unpack_round_trip(bits):
    rng = np.random.default_rng(bits)
    for k in range(1, 33):
        for lead in ((), (3,), (2, 5)):
            idx = rng.integers(0, 2**bits, size=(*lead, k))
            idx.flat[0] = 2**bits - 1  # the largest index
            packed = pack_indices(idx, bits)
            assert packed.dtype == np.uint8 and packed.shape == (*lead, math.ceil(k * bits / 8))
            out = unpack_indices(packed, k, bits)
            assert out.shape == idx.shape
            np.testing.assert_array_equal(out, idx)


def test_pack_bit_layout_is_big_endian_concatenation():
    # Independent reference: each index as a bits-wide MSB-first bit string, concatenated,
    # zero-padded to whole bytes.
    rng = np.random.default_rng(0)
    for bits, k in ((10, 20), (3, 5), (16, 3), (1, 9), (7, 1)):
        idx = rng.integers(0, 2**bits, size=k)
        s = "".join(format(int(i), f"0{bits}b") for i in idx)
        s += "0" * (-len(s) % 8)
        ref = np.array([int(s[j: j + 8], 2) for j in range(0, len(s), 8)], dtype=np.uint8)
        np.testing.assert_array_equal(pack_indices(idx, bits), ref)
    np.testing.assert_array_equal(pack_indices(np.array([1, 2, 3]), 10), [0, 64, 32, 12])  # 00000000 01000000 00100000 00001100


def test_pack_empty_leading_dims():
    packed = pack_indices(np.zeros((0, 3, 5), dtype=np.int64), 10)
    assert packed.shape == (0, 3, 7)
    assert unpack_indices(packed, 5, 10).shape == (0, 3, 5)


# -- top-k storage -----------------------------------------------------------------------


def test_topk_encode_decode():
    rng = np.random.default_rng(1)
    c, k = 527, 20
    s = TopKStorage(k)
    x = rng.normal(0.0, 3.0, size=(6, 2, c))  # float64, leading dims (clips, views)
    enc = s.encode(x)
    assert set(enc) == {"topk_values", "topk_indices", "topk_rest"}
    assert enc["topk_values"].dtype == np.float16 and enc["topk_values"].shape == (6, 2, k)
    assert enc["topk_indices"].dtype == np.uint8 and enc["topk_indices"].shape == (6, 2, 25)
    assert enc["topk_rest"].dtype == np.float16 and enc["topk_rest"].shape == (6, 2)
    for name, (per_view, dtype, _) in s.datasets(c).items():
        assert enc[name].shape[2:] == per_view and enc[name].dtype == dtype

    # The top k, in descending order, with values rounded to fp16 once (as dense storage does).
    idx = unpack_indices(enc["topk_indices"], k, index_bits(c))
    ref_idx = np.argsort(-x, axis=-1, kind="stable")[..., :k]
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(enc["topk_values"], np.take_along_axis(x, ref_idx, -1).astype(np.float16))
    np.testing.assert_array_equal(
        enc["topk_values"], np.take_along_axis(DenseStorage().encode(x)["logits"], ref_idx, -1))

    # The rest value: logsumexp(rest) - log(C - k), fp16 (within one fp16 rounding).
    rest = np.sort(x, axis=-1)[..., : c - k]
    r = logsumexp(rest) - math.log(c - k)
    np.testing.assert_allclose(enc["topk_rest"].astype(np.float64), r, rtol=2**-11, atol=2**-24)
    assert (enc["topk_rest"] <= enc["topk_values"].min(axis=-1)).all()

    dec = s.decode(enc, c)
    assert dec.dtype == np.float32 and dec.shape == x.shape
    np.testing.assert_array_equal(np.take_along_axis(dec, idx, -1), enc["topk_values"].astype(np.float32))
    is_top = np.zeros(x.shape, dtype=bool)
    np.put_along_axis(is_top, idx, True, axis=-1)
    np.testing.assert_array_equal(dec[~is_top].reshape(6, 2, c - k),
                                  np.repeat(enc["topk_rest"].astype(np.float32)[..., None], c - k, -1))

    # Softmax at T=1: the top-k classes keep their dense probabilities, the rest share the
    # remaining mass equally, and the whole sums to 1. Against the dense fp16 cache, whose
    # top-k values are the same fp16 numbers: only the normaliser differs, by fp16 rounding.
    p_dec = softmax(dec)
    p_dense = softmax(DenseStorage().decode(DenseStorage().encode(x), c))
    np.testing.assert_allclose(np.take_along_axis(p_dec, idx, -1), np.take_along_axis(p_dense, idx, -1), rtol=2e-3)
    np.testing.assert_allclose(p_dec.sum(-1), 1.0, rtol=1e-12)
    rest_dec = p_dec[~is_top].reshape(6, 2, c - k)
    np.testing.assert_allclose(rest_dec, np.broadcast_to(rest_dec[..., :1], rest_dec.shape), rtol=1e-12)  # shared equally
    np.testing.assert_allclose(rest_dec.sum(-1), 1.0 - np.take_along_axis(p_dense, idx, -1).sum(-1), rtol=2e-3)
    # Against the exact float64 softmax: log-probabilities off by at most fp16 rounding of the
    # class's own logit plus that of the normaliser's terms.
    p_ref = softmax(x)
    err = np.abs(np.log(np.take_along_axis(p_dec, idx, -1)) - np.log(np.take_along_axis(p_ref, idx, -1)))
    bound = 2**-11 * (np.abs(np.take_along_axis(x, idx, -1)) + np.abs(dec).max(-1, keepdims=True)) + 1e-9
    assert (err <= bound).all(), (err / bound).max()
    # ... which a naive rest rule (e.g. every rest class at the rest's minimum) would not give
    naive = dec.copy()
    naive[~is_top] = np.repeat(rest.min(-1)[..., None], c - k, -1).ravel()
    assert not np.allclose(np.take_along_axis(softmax(naive), idx, -1), np.take_along_axis(p_dense, idx, -1), rtol=2e-3)


def test_topk_exact_on_fp16_representable_logits():
    # With logits already fp16, only the rest value is rounded: the normaliser is exact up to it.
    rng = np.random.default_rng(2)
    c, k = 100, 7
    x = fp16(rng.normal(0.0, 2.0, size=(50, c))).astype(np.float64)
    s = TopKStorage(k)
    enc = s.encode(x)
    dec = s.decode(enc, c)
    idx = unpack_indices(enc["topk_indices"], k, index_bits(c))
    top = np.take_along_axis(x, idx, -1)
    np.testing.assert_array_equal(enc["topk_values"].astype(np.float64), top)
    z_dec = np.exp(top).sum(-1) + (c - k) * np.exp(enc["topk_rest"].astype(np.float64))
    z_ref = np.exp(x).sum(-1)
    np.testing.assert_allclose(z_dec, z_ref, rtol=2**-10)
    np.testing.assert_allclose(np.take_along_axis(softmax(dec), idx, -1), np.exp(top) / z_ref[:, None], rtol=2**-10)


def test_topk_values_round_once_from_float64():
    # 1 + 2**-11 + 2**-40 rounds up to 1 + 2**-10 in fp16; through float32 (1 + 2**-11 exactly, a tie)
    # it would round to even, 1.0. Top-k must store what dense storage stores.
    x = np.array([[1 + 2**-11 + 2**-40, 0.0, -1.0, -2.0, -3.0]])
    enc = TopKStorage(2).encode(x)
    assert enc["topk_values"][0, 0] == np.float16(1 + 2**-10) == DenseStorage().encode(x)["logits"][0, 0]
    # float32 and integer inputs work too
    np.testing.assert_array_equal(TopKStorage(2).encode(x.astype(np.float32))["topk_values"][0], [1.0, 0.0])
    np.testing.assert_array_equal(TopKStorage(2).encode(np.array([[3, 1, 2]]))["topk_values"][0], [3.0, 2.0])


def test_topk_ties_are_deterministic():
    s = TopKStorage(3)
    x = np.zeros((2, 10))
    x[1, [2, 5, 7, 8]] = 1.0  # four-way tie for three places
    enc = s.encode(x)
    np.testing.assert_array_equal(unpack_indices(enc["topk_indices"], 3, index_bits(10)), [[0, 1, 2], [2, 5, 7]])
    assert enc["topk_rest"][0] == 0.0  # logsumexp of 7 zeros - log 7
    for _ in range(3):
        again = s.encode(x.copy())
        for name in enc:
            np.testing.assert_array_equal(again[name], enc[name])
    dec = s.decode(enc, 10)
    np.testing.assert_array_equal(dec[0], 0.0)
    assert dec[1, 8] < 1.0 and (dec[1, [2, 5, 7]] == 1.0).all()


@pytest.mark.parametrize("k", [0, -1, 13, 14])
def test_topk_rejects_bad_k(k, tmp_path):
    with pytest.raises(ValueError, match="1 <= k < number of classes"):
        TopKStorage(k).encode(np.zeros((2, C)))
    with pytest.raises(ValueError, match="1 <= k"):
        TopKStorage(k).datasets(C)
    lids, lnames = labels()
    p = tmp_path / "c.h5"
    with pytest.raises(ValueError, match="1 <= k"):
        LogitCacheWriter(p, clip_ids(), lids, lnames, {"a": {}}, storage=TopKStorage(k))
    assert not p.exists() and not (tmp_path / "c.h5.partial").exists()


def test_bytes_per_view_and_specs():
    assert TopKStorage(20).bytes_per_view(527) == 40 + 25 + 2 == 67
    assert TopKStorage(20).bytes_per_view(527) + VIEW_PARAMS_DTYPE.itemsize <= 84
    assert DenseStorage().bytes_per_view(527) == 1054
    assert VIEW_PARAMS_DTYPE.itemsize == 16 and list(VIEW_PARAMS_DTYPE.names) == [
        "partner", "lam", "gain_db", "shift", "freq_start", "freq_width", "time_start", "time_width"]
    spec = TopKStorage(20).datasets(527)
    assert {n: (s[0], s[1]) for n, s in spec.items()} == {
        "topk_values": ((20,), np.dtype(np.float16)),
        "topk_indices": ((25,), np.dtype(np.uint8)),
        "topk_rest": ((), np.dtype(np.float16)),
    }
    assert storage_from_spec("topk:20") == storage_from_spec("top20") == storage_from_spec(20) == TopKStorage(20)
    assert storage_from_spec("dense") == storage_from_spec(None) == DenseStorage()
    with pytest.raises(ValueError, match="unknown storage"):
        storage_from_spec("topk:x")
    assert storage_from_attr(json.dumps(TopKStorage(5).describe())) == TopKStorage(5)
    assert storage_from_attr('{"kind": "dense"}') == DenseStorage()
    with pytest.raises(ValueError):
        storage_from_attr('{"kind": "topk"}')


# -- writer / reader round trip ------------------------------------------------------------


def write_cache(path, rng, *, views=1, augment=None, storage="dense", layout="chunked", teachers=("a", "b"),
                batch=5, created_utc=CREATED, data=None, params=None, order=None):
    """Write every row for every teacher in shuffled batches; return (logits (N, V, C), params)."""
    ids = clip_ids()
    lids, lnames = labels()
    if data is None:
        data = {t: rng.normal(0.0, 4.0, size=(N, views, C)) for t in teachers}
    if params is None and augment is not None:
        params = random_params(rng, N, views)
    opts = {"compression": None, "layout": "contiguous"} if layout == "contiguous" else {"chunk_rows": CHUNK}
    with LogitCacheWriter(path, ids, lids, lnames, {t: {"name": t} for t in teachers}, views=views, augment=augment,
                          storage=storage, created_utc=created_utc, command="test", **opts) as w:
        assert w.views == views and w.augmented == (augment is not None)
        for ti, t in enumerate(teachers):
            perm = rng.permutation(N) if order is None else order
            for j, start in enumerate(range(0, N, batch)):
                sel = perm[start: start + batch]
                x = data[t][sel]
                if views == 1 and j % 2 == 0:
                    x = x[:, 0]  # (B, C) is accepted with one view per clip
                # The second teacher passes the (same) params only sometimes.
                p = params[sel] if params is not None and (ti == 0 or j % 2) else None
                w.write(t, [ids[i] for i in sel], x, params=p)
    return data, params


CONFIGS = [
    pytest.param(1, None, id="v1"),
    pytest.param(1, AUGMENT, id="v1aug"),
    pytest.param(3, AUGMENT, id="v3aug"),
]


@pytest.mark.parametrize("layout", ["chunked", "contiguous"])
@pytest.mark.parametrize("storage", ["dense", f"topk:{K}"])
@pytest.mark.parametrize("views,augment", CONFIGS)
def test_round_trip(tmp_path, views, augment, storage, layout):
    rng = np.random.default_rng(zlib.crc32(f"{views}-{augment is None}-{storage}-{layout}".encode()))
    path = tmp_path / "c.h5"
    data, params = write_cache(path, rng, views=views, augment=augment, storage=storage, layout=layout)
    st = storage_from_spec(storage)
    expected = {t: (fp16(x) if storage == "dense" else st.decode(st.encode(x), C)) for t, x in data.items()}
    if storage != "dense":
        # independent check of the expectation: top-k positions hold the fp16 logits
        x = data["a"]
        idx = np.argsort(-x, axis=-1, kind="stable")[..., :K]
        np.testing.assert_array_equal(np.take_along_axis(expected["a"], idx, -1), fp16(np.take_along_axis(x, idx, -1)))
        assert not np.array_equal(expected["a"], fp16(x))

    ids = clip_ids()
    r = LogitCacheReader(path, cache_chunks=2)
    assert r.format_version == 2 and r.views == views and r.augmented == (augment is not None)
    assert r.augment == augment
    assert r.storage("a") == st and r.storage("b") == st
    assert all(r.clip_id(i) == ids[i] for i in range(N))
    for t in ("a", "b"):
        for size in (1, 5, 11, N):
            sel = rng.choice(N, size=size, replace=False)
            v = rng.integers(0, views, size=size)
            got = r.get([ids[i] for i in sel], t, views=v)
            assert got.dtype == np.float32 and got.shape == (size, C)
            np.testing.assert_array_equal(got, expected[t][sel, v])
        # repeated ids with different views; chunk boundaries; partial last chunk
        sel = np.array([3, 4, 3, 7, 8, 22, 0, 22])
        v = np.arange(len(sel)) % views
        np.testing.assert_array_equal(r.get([ids[i] for i in sel], t, views=v), expected[t][sel, v])
        for view in range(views):  # one view for all
            np.testing.assert_array_equal(r.get(ids[::-1], t, views=view), expected[t][::-1, view])
        if views == 1:
            np.testing.assert_array_equal(r.get(ids, t), expected[t][:, 0])
        assert r.get([], t, views=[]).shape == (0, C)

    info = r.storage_info("a")
    assert info["storage"] == st.describe()
    assert info["bytes_per_view"] == st.bytes_per_view(C)
    assert info["replay_bytes_per_view"] == (16 if augment is not None else 0)
    first = "logits" if storage == "dense" else "topk_values"
    assert info["shape"] == (N, views, C if storage == "dense" else K)
    assert info["chunks"] == (None if layout == "contiguous" else (CHUNK, views, C if storage == "dense" else K))
    assert info["storage_bytes"] > 0

    with h5py.File(path, "r") as f:
        assert int(f["views"].attrs["count"]) == views
        aug_attr = f["views"].attrs["augment"]
        assert (json.loads(aug_attr) if augment is not None else aug_attr) == (augment or "null")
        assert json.loads(f["teachers/a"].attrs["storage"]) == st.describe()
        for name, (per_view, dtype, _) in st.datasets(C).items():
            ds = f[f"teachers/a/{name}"]
            assert ds.shape == (N, views, *per_view) and ds.dtype == dtype
        assert (f[f"teachers/a/{first}"].chunks is None) == (layout == "contiguous")
        assert f["teachers/b/written"][()].tolist() == [1] * N
        if augment is None:
            assert "views/params" not in f
            with pytest.raises(ValueError, match="no augmented views"):
                r.view_params(ids[:2], 0)
            return
        pds = f["views/params"]
        assert pds.dtype == VIEW_PARAMS_DTYPE and pds.shape == (N, views)
        assert (pds.chunks is None) == (layout == "contiguous")
        on_disk = pds[()]
    assert on_disk.tobytes() == params.tobytes()

    # view_params: exact, any order, per-clip views; the contiguous layout reads through a memmap.
    sel = rng.permutation(N)
    v = rng.integers(0, views, size=N)
    got = r.view_params([ids[i] for i in sel], v)
    assert got.dtype == VIEW_PARAMS_DTYPE and got.shape == (N,)
    assert got.tobytes() == params[sel, v].tobytes() == on_disk[sel, v].tobytes()
    if layout == "contiguous":
        assert "views/params" in r._maps
        mm = r._maps["views/params"]
        assert mm.dtype == VIEW_PARAMS_DTYPE and mm.shape == (N, views)
        assert np.asarray(mm).tobytes() == on_disk.tobytes()
    partner = got["partner"]
    assert [r.clip_id(int(p)) for p in partner if p >= 0] == [ids[int(p)] for p in partner if p >= 0]
    assert r.view_params([ids[5]], views - 1).tobytes() == params[5, views - 1].tobytes()
    assert r.view_params([], 0).shape == (0,)
    with pytest.raises(KeyError, match="not in logit cache"):
        r.view_params(["nope"], 0)
    with pytest.raises(IndexError, match="view out of range"):
        r.view_params(ids[:1], views)


def test_rewrite_replaces_row_and_empty_writes(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "c.h5"
    ids = clip_ids()
    lids, lnames = labels()
    x = rng.normal(0, 3, size=(N, 3, C))
    y = rng.normal(0, 3, size=(N, 3, C))
    params = random_params(rng, N, 3)
    s = TopKStorage(K)
    with LogitCacheWriter(path, ids, lids, lnames, {"a": {}}, views=3, augment=AUGMENT, storage=s,
                          chunk_rows=CHUNK) as w:
        w.write("a", [], np.zeros((0, 3, C)), params=np.zeros((0, 3), VIEW_PARAMS_DTYPE))
        w.write("a", [], np.zeros((0, 3, C)))
        w.write_encoded("a", [], s.encode(np.zeros((0, 3, C))), None)
        assert w.missing("a") == ids
        w.write("a", ids, x, params=params)
        w.write("a", ids[5:9], y[5:9])  # again: params already known
        w.write("a", ids[9:12], y[9:12], params=params[9:12])  # again, with the same params
    r = LogitCacheReader(path)
    want = s.decode(s.encode(np.concatenate([x[:5], y[5:12], x[12:]])), C)
    for v in range(3):
        np.testing.assert_array_equal(r.get(ids, views=v), want[:, v])


def test_write_encoded_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "c.h5"
    ids = clip_ids()
    lids, lnames = labels()
    s = TopKStorage(K)
    x = rng.normal(0, 3, size=(N, 2, C))
    params = random_params(rng, N, 2)
    enc = s.encode(x)
    perm = rng.permutation(N)
    with LogitCacheWriter(path, ids, lids, lnames, {"a": {}}, views=2, augment=AUGMENT, storage=f"topk:{K}",
                          layout="contiguous", compression=None) as w:
        bad = dict(enc)
        bad["topk_rest"] = enc["topk_rest"].astype(np.float32)
        with pytest.raises(ValueError, match="topk_rest"):
            w.write_encoded("a", ids, bad, params)
        with pytest.raises(ValueError, match="do not match this cache's storage"):
            w.write_encoded("a", ids, {"logits": fp16(x).astype(np.float16)}, params)
        with pytest.raises(ValueError, match="topk_values"):
            w.write_encoded("a", ids[:3], {k: v[:4] for k, v in enc.items()}, params[:3])
        for start in range(0, N, 6):
            sel = perm[start: start + 6]
            w.write_encoded("a", [ids[i] for i in sel], {k: v[sel] for k, v in enc.items()}, params[sel])
    r = LogitCacheReader(path)
    np.testing.assert_array_equal(r.get(ids, views=1), s.decode(enc, C)[:, 1])
    v = rng.integers(0, 2, size=N)
    got = r.get_encoded([ids[i] for i in perm], views=v)  # the stored arrays, as on disk
    assert set(got) == set(enc)
    for k, a in enc.items():
        assert got[k].dtype == a.dtype
        np.testing.assert_array_equal(got[k], a[perm, v])
    with h5py.File(path, "r") as f:
        for k, v in enc.items():
            np.testing.assert_array_equal(f[f"teachers/a/{k}"][()], v)


# -- errors ----------------------------------------------------------------------------------


def test_writer_view_and_params_errors(tmp_path):
    rng = np.random.default_rng(5)
    ids = clip_ids()
    lids, lnames = labels()
    p = tmp_path / "c.h5"
    with pytest.raises(ValueError, match="augment"):
        LogitCacheWriter(p, ids, lids, lnames, {"a": {}}, views=3)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="views must be a positive integer"):
            LogitCacheWriter(p, ids, lids, lnames, {"a": {}}, views=bad, augment=AUGMENT)
    with pytest.raises(ValueError, match="augment"):
        LogitCacheWriter(p, ids, lids, lnames, {"a": {}}, views=2, augment={"x": object()})
    with pytest.raises(ValueError, match="unknown storage"):
        LogitCacheWriter(p, ids, lids, lnames, {"a": {}}, storage="sparse")
    assert not p.exists() and not (tmp_path / "c.h5.partial").exists()

    x = rng.normal(0, 3, size=(N, 3, C))
    params = random_params(rng, N, 3)
    with LogitCacheWriter(p, ids, lids, lnames, {"a": {}, "b": {}}, views=3, augment=AUGMENT,
                          storage=f"topk:{K}", chunk_rows=CHUNK) as w:
        with pytest.raises(ValueError, match="replay params on the first write"):
            w.write("a", ids[:4], x[:4])
        with pytest.raises(ValueError, match=r"shape .* does not match \(len\(clip_ids\), views, num_classes\)"):
            w.write("a", ids[:4], x[:4, 0], params=params[:4])  # (B, C) on a 3-view cache
        with pytest.raises(ValueError, match="shape"):
            w.write("a", ids[:4], x[:4, :2], params=params[:4])
        with pytest.raises(ValueError, match="VIEW_PARAMS_DTYPE"):
            w.write("a", ids[:4], x[:4], params=params[:4, :2])  # wrong shape
        with pytest.raises(ValueError, match="VIEW_PARAMS_DTYPE"):
            w.write("a", ids[:4], x[:4], params=params[:3])
        with pytest.raises(ValueError, match="VIEW_PARAMS_DTYPE"):
            w.write("a", ids[:4], x[:4], params=np.zeros((4, 3), dtype=np.float32))  # wrong dtype
        reordered = np.dtype([(n, VIEW_PARAMS_DTYPE.fields[n][0]) for n in reversed(VIEW_PARAMS_DTYPE.names)])
        with pytest.raises(ValueError, match="VIEW_PARAMS_DTYPE"):
            w.write("a", ids[:4], x[:4], params=params[:4].astype(reordered))
        for partner in (N, N + 5, -2):
            pp = params[:4].copy()
            pp["partner"][2, 1] = partner
            with pytest.raises(ValueError, match="partner"):
                w.write("a", ids[:4], x[:4], params=pp)
        # Nothing of the rejected calls was stored: still no params, no rows.
        assert w.missing("a") == ids
        with pytest.raises(ValueError, match="replay params on the first write"):
            w.write("a", ids[:4], x[:4])

        w.write("a", ids[:8], x[:8], params=params[:8])
        w.write("b", ids[:4], x[:4])  # params known from teacher a
        other = params[4:12].copy()
        other["gain_db"][3, 2] += 1.0  # row 7: differs from what teacher a stored
        with pytest.raises(ValueError, match="same views"):
            w.write("b", ids[4:12], x[4:12], params=other)
        assert w.missing("b") == ids[4:]  # the refused batch left nothing behind
        with pytest.raises(ValueError, match="same views"):
            w.write("a", ids[7:8], x[7:8], params=other[3:4])  # same teacher, other params: refused too
        # consistent params for a batch that overlaps known (4..7) and new (8..11) clips
        w.write("b", ids[4:12], x[4:12], params=params[4:12])
        w.write("a", ids[8:12], x[8:12])  # new clips' params now known from teacher b
        with pytest.raises(ValueError, match="replay params on the first write"):
            w.write("b", ids[11:14], x[11:14])  # 12, 13: no params yet
    r = LogitCacheReader(p)
    assert r.view_params(ids[:12], [0, 1, 2] * 4).tobytes() == params[np.arange(12), [0, 1, 2] * 4].tobytes()
    with pytest.raises(KeyError, match="never written"):
        r.get(ids[11:13], "b", views=0)


def test_writer_rejects_params_without_augmentation(tmp_path):
    ids = clip_ids()
    lids, lnames = labels()
    with LogitCacheWriter(tmp_path / "c.h5", ids, lids, lnames, {"a": {}}) as w:
        with pytest.raises(ValueError, match="no augmented views"):
            w.write("a", ids[:2], np.zeros((2, C)), params=np.zeros((2, 1), VIEW_PARAMS_DTYPE))
        w.write("a", ids, np.zeros((N, 1, C)))  # (B, 1, C) is fine with one view


def test_reader_view_errors(tmp_path):
    rng = np.random.default_rng(6)
    path = tmp_path / "c.h5"
    write_cache(path, rng, views=3, augment=AUGMENT, storage="dense", teachers=("a",))
    r = LogitCacheReader(path)
    ids = clip_ids()
    with pytest.raises(ValueError, match="holds 3 views per clip; pass views="):
        r.get(ids[:2])
    for bad in (3, -1, [0, 3], [-1, 0]):
        with pytest.raises(IndexError, match=r"view out of range.*0\.\.2"):
            r.get(ids[:2], views=bad)
    with pytest.raises(ValueError, match="one view per clip id"):
        r.get(ids[:2], views=[0, 1, 2])
    with pytest.raises(TypeError):
        r.view_params(ids[0], 0)

    one = tmp_path / "one.h5"
    write_cache(one, rng, views=1, teachers=("a",))
    r1 = LogitCacheReader(one)
    r1.get(ids[:2], views=0)
    r1.get(ids[:2], views=[0, 0])
    with pytest.raises(IndexError, match="view out of range"):
        r1.get(ids[:2], views=1)


# -- version 1 files ------------------------------------------------------------------------


def write_v1(path, x, written, *, layout="chunked", failed=None, rows=8):
    """A version-1 file built by hand, as FORMAT.md version 1 specifies it."""
    n, c = x.shape
    lids, lnames = labels(c)
    sdt = h5py.string_dtype()
    failed = failed or {}
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "dass-distill-logit-cache"
        f.attrs["format_version"] = np.int64(1)
        f.attrs["toolkit_version"] = "0.1.0"
        f.attrs["created_utc"] = "2024-06-01T00:00:00Z"
        f.attrs["command"] = "dass-distill cache --old"
        f.create_dataset("clips/id", data=np.array(clip_ids(n), dtype=object), dtype=sdt)
        f.create_dataset("label_map/id", data=np.array(lids, dtype=object), dtype=sdt)
        f.create_dataset("label_map/name", data=np.array(lnames, dtype=object), dtype=sdt)
        for name in ("ast", "htsat"):
            g = f.create_group(f"teachers/{name}")
            g.attrs["provenance"] = json.dumps({"name": name, "kind": name})
            g.attrs["members"] = json.dumps([name])
            data = np.where(written[:, None], x, np.nan).astype(np.float16)
            if layout == "chunked":
                g.create_dataset("logits", data=data, chunks=(rows, c), compression="lzf", fillvalue=np.float16(np.nan))
            else:
                g.create_dataset("logits", data=data, fillvalue=np.float16(np.nan))
            g.create_dataset("written", data=written.astype(np.uint8), chunks=(n,), fillvalue=0)
        for key, vals in (("failed/id", list(failed)), ("failed/reason", list(failed.values()))):
            f.create_dataset(key, data=np.array(vals, dtype=object), dtype=sdt, maxshape=(None,), chunks=(1024,))


@pytest.mark.parametrize("layout", ["chunked", "contiguous"])
def test_version1_file_reads_as_one_dense_view(tmp_path, layout):
    rng = np.random.default_rng(7)
    path = tmp_path / "v1.h5"
    x = rng.normal(0, 4, size=(N, C))
    written = np.ones(N, dtype=bool)
    written[[2, 9]] = False
    ids = clip_ids()
    write_v1(path, x, written, layout=layout, failed={ids[2]: "unreadable audio"})
    with h5py.File(path, "r") as f:
        assert "views" not in f and "storage" not in f["teachers/ast"].attrs
        assert (f["teachers/ast/logits"].chunks is None) == (layout == "contiguous")

    r = LogitCacheReader(path)
    assert r.format_version == 1 and r.views == 1 and r.augmented is False and r.augment is None
    assert r.storage("ast") == DenseStorage() and r.teachers == ["ast", "htsat"]
    assert r.failed == {ids[2]: "unreadable audio"}
    assert r.provenance("htsat") == {"name": "htsat", "kind": "htsat"} and r.members("ast") == ["ast"]
    ok = [i for i in range(N) if written[i]]
    order = [ok[i] for i in rng.permutation(len(ok))] + [ok[0], ok[0]]
    for t in ("ast", "htsat"):
        np.testing.assert_array_equal(r.get([ids[i] for i in order], t), fp16(x)[order])
        np.testing.assert_array_equal(r.get([ids[i] for i in order], t, views=0), fp16(x)[order])
    with pytest.raises(IndexError, match="view out of range"):
        r.get(ids[:1], "ast", views=1)
    with pytest.raises(KeyError, match="failed during caching: unreadable audio"):
        r.get([ids[2]], "ast")
    with pytest.raises(KeyError, match="never written"):
        r.get([ids[9]], "ast")
    with pytest.raises(ValueError, match="no augmented views"):
        r.view_params(ids[:1], 0)
    info = r.storage_info("ast")
    assert info["storage"] == {"kind": "dense"} and info["bytes_per_view"] == 2 * C
    assert info["replay_bytes_per_view"] == 0 and info["shape"] == (N, C)
    if layout == "contiguous":
        assert "teachers/ast/logits" in r._maps and r._maps["teachers/ast/logits"].shape == (N, 1, C)
    else:
        assert r.chunk_rows("ast") == 8


def test_version1_with_v2_shaped_logits_is_refused(tmp_path):
    path = tmp_path / "v1.h5"
    write_v1(path, np.zeros((N, C)), np.ones(N, dtype=bool))
    with h5py.File(path, "r+") as f:
        del f["teachers/ast/logits"]
        f["teachers/ast/logits"] = np.zeros((N, 1, C), np.float16)
    with pytest.raises(CacheFormatError, match=r"/teachers/ast/logits has shape \(23, 1, 13\)"):
        LogitCacheReader(path)


# -- validation of version-2 files ----------------------------------------------------------


def _refused(path, *match):
    with pytest.raises(CacheFormatError) as ei:
        LogitCacheReader(path)
    msg = str(ei.value)
    assert str(path) in msg and "\n" not in msg and "re-create" in msg, msg
    for m in match:
        assert m in msg, msg


@pytest.mark.parametrize("storage", ["dense", f"topk:{K}"])
def test_validate_v2(tmp_path, storage):
    rng = np.random.default_rng(8)
    base = tmp_path / "base.h5"
    write_cache(base, rng, views=2, augment=AUGMENT, storage=storage)
    LogitCacheReader(base)  # valid as written
    first = "logits" if storage == "dense" else "topk_values"

    def variant(name, edit):
        p = tmp_path / f"{name}.h5"
        p.write_bytes(base.read_bytes())
        with h5py.File(p, "r+") as f:
            edit(f)
        return p

    _refused(variant("nostorage", lambda f: f["teachers/b"].attrs.__delitem__("storage")),
             "/teachers/b has no valid 'storage' attribute")
    _refused(variant("badstorage", lambda f: f["teachers/a"].attrs.__setitem__("storage", "{not json")), "'storage'")
    _refused(variant("bigk", lambda f: f["teachers/a"].attrs.__setitem__("storage", json.dumps({"kind": "topk", "k": C}))),
             "'storage'")
    _refused(variant("unknown", lambda f: f["teachers/a"].attrs.__setitem__("storage", '{"kind": "sparse"}')), "'storage'")

    # the storage attribute names datasets the group does not have
    other = '{"kind": "dense"}' if storage != "dense" else json.dumps({"kind": "topk", "k": K})
    _refused(variant("mismatch", lambda f: f["teachers/a"].attrs.__setitem__("storage", other)),
             "missing dataset /teachers/a/")

    def views_count(f):
        f["views"].attrs["count"] = np.int64(3)
    _refused(variant("count", views_count), "/views/params must be (23, 3)")

    def views_count_no_params(f):
        del f["views/params"]
        f["views"].attrs["count"] = np.int64(3)
    _refused(variant("count2", views_count_no_params), f"/teachers/a/{first} has shape (23, 2", "expected (23, 3")

    def zero_views(f):
        f["views"].attrs["count"] = np.int64(0)
    _refused(variant("zero", zero_views), "count is 0")

    def no_views(f):
        del f["views"]
    _refused(variant("noviews", no_views), "missing group /views")

    def flat(f):  # a version-1 shaped (N, C) dataset inside a version-2 file
        ds = f[f"teachers/a/{first}"]
        data = ds[:, 0]
        del f[f"teachers/a/{first}"]
        f[f"teachers/a/{first}"] = data
    _refused(variant("flat", flat), f"/teachers/a/{first} has shape (23, {C if storage == 'dense' else K})")

    def wrong_dtype(f):
        ds = f[f"teachers/a/{first}"]
        data = ds[()].astype(np.float32)
        del f[f"teachers/a/{first}"]
        f[f"teachers/a/{first}"] = data
    _refused(variant("dtype", wrong_dtype), "float32", "float16")

    def params_dtype(f):
        data = f["views/params"][()]
        del f["views/params"]
        f["views/params"] = data["partner"]
    _refused(variant("pdtype", params_dtype), "/views/params")


# -- determinism ---------------------------------------------------------------------------


def _contents(path):
    out = {}

    def visit(name, obj):
        attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in obj.attrs.items()}
        if isinstance(obj, h5py.Dataset):
            data = obj[()]
            out[name] = (str(obj.dtype), obj.shape, obj.chunks, obj.compression, attrs,
                         data.tobytes() if data.dtype.kind != "O" else data.tolist())
        else:
            out[name] = attrs

    with h5py.File(path, "r") as f:
        out["/"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}
        f.visititems(visit)
    return out


@pytest.mark.parametrize("storage,layout", [(f"topk:{K}", "chunked"), ("dense", "contiguous")])
def test_determinism_across_orders_and_batches(tmp_path, storage, layout):
    rng = np.random.default_rng(9)
    ids = clip_ids()
    data = {t: rng.normal(0, 3, size=(N, 3, C)) for t in ("a", "b")}
    params = random_params(rng, N, 3)
    p1, p2 = tmp_path / "one.h5", tmp_path / "two.h5"
    write_cache(p1, rng, views=3, augment=AUGMENT, storage=storage, layout=layout, data=data, params=params,
                batch=N, order=np.arange(N))
    write_cache(p2, rng, views=3, augment=AUGMENT, storage=storage, layout=layout, data=data, params=params,
                batch=4)
    a, b = _contents(p1), _contents(p2)
    assert sorted(a) == sorted(b)
    assert "views/params" in a and f"teachers/b/{'topk_indices' if storage != 'dense' else 'logits'}" in a
    for name in a:
        assert a[name] == b[name], name

    # failed clips in a different order, teachers interleaved: still the same contents
    lids, lnames = labels()
    for i, p in enumerate((tmp_path / "f1.h5", tmp_path / "f2.h5")):
        opts = {"compression": None, "layout": "contiguous"} if layout == "contiguous" else {"chunk_rows": CHUNK}
        with LogitCacheWriter(p, ids, lids, lnames, {"a": {"name": "a"}, "b": {"name": "b"}}, views=3,
                              augment=AUGMENT, storage=storage, created_utc=CREATED, command="test", **opts) as w:
            fails = [(ids[20], "bad"), (ids[3], "worse")]
            rows = [r for r in range(N) if r not in (3, 20)]
            if i:
                fails, rows = fails[::-1], rows[::-1]
            for r in rows:
                for t in (("a", "b") if i else ("b", "a")):
                    w.write(t, [ids[r]], data[t][r: r + 1], params=params[r: r + 1])
            for cid, why in fails:
                w.add_failed(cid, why)
    c1, c2 = _contents(tmp_path / "f1.h5"), _contents(tmp_path / "f2.h5")
    assert c1 == c2
    assert LogitCacheReader(tmp_path / "f1.h5").failed == {ids[3]: "worse", ids[20]: "bad"}
