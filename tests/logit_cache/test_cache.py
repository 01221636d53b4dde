"""Tests of the HDF5 logit cache: format, writer, reader, info."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle

import h5py
import numpy as np
import pytest

from dass_distill.logit_cache import (
    FORMAT_NAME,
    FORMAT_VERSION,
    CacheFormatError,
    LogitCacheReader,
    LogitCacheWriter,
    summarize,
)
from dass_distill.logit_cache.writer import default_chunk_rows

N, C = 50, 11
CHUNK = 7  # 50 rows -> 8 chunks, the last one partial


def clip_ids(n: int = N) -> list[str]:
    return [f"Y{i:05d}_clip-é" for i in range(n)]


def labels(c: int = C) -> tuple[list[str], list[str]]:
    return [f"/m/{i:04x}" for i in range(c)], [f"Label {i}, «unicode»" for i in range(c)]


def random_logits(rng: np.random.Generator, n: int = N, c: int = C) -> np.ndarray:
    # Wide range, both signs, float64 input: fp16 rounding is visible, zeros are not.
    return rng.normal(0.0, 6.0, size=(n, c)) + rng.choice([-1.0, 1.0], size=(n, 1))


def fp16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).astype(np.float16).astype(np.float32)


PROV = {
    "name": "ast",
    "kind": "ast",
    "checkpoint": {"path": "/ckpt/audioset_10_10_0.4593.pth", "sha256": "ab" * 32},
    "frontend": {"sample_rate": 16000, "num_mel_bins": 128, "target_length": 1024, "mean": -4.2677393},
    "notes": "ünïcödé ok",
}


def make_cache(path, rng, *, teachers=None, chunk_rows=CHUNK, compression="lzf", n=N, layout="chunked"):
    """Write a complete cache (rows in shuffled batches); return {teacher: logits}."""
    ids = clip_ids(n)
    teachers = teachers or {"ast": PROV}
    data = {t: random_logits(rng, n) for t in teachers}
    lids, lnames = labels()
    with LogitCacheWriter(
        path, ids, lids, lnames, teachers, command="dass-distill cache --x 1", toolkit_version="9.9",
        compression=compression, chunk_rows=chunk_rows, layout=layout,
    ) as w:
        for t, x in data.items():
            perm = rng.permutation(n)
            for start in range(0, n, 9):
                sel = perm[start : start + 9]
                w.write(t, [ids[i] for i in sel], x[sel])
    return data


# -- round trip ------------------------------------------------------------------------


def test_round_trip_exact_fp16(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "c.h5"
    data = make_cache(path, rng)["ast"]
    r = LogitCacheReader(path)
    got = r.get(clip_ids())
    assert got.dtype == np.float32 and got.shape == (N, C)
    np.testing.assert_array_equal(got, fp16(data))
    # fp16 rounding only: relative error within half an fp16 ulp.
    np.testing.assert_allclose(got, data, rtol=2**-11, atol=1e-7)
    assert not np.array_equal(got, data)  # the input really was float64
    assert r.clip_ids == clip_ids() and len(r) == N
    assert (r.label_ids, r.label_names) == labels()
    assert r.num_classes == C
    assert r.teachers == ["ast"]
    a = r.attrs
    assert a["format"] == FORMAT_NAME and a["format_version"] == FORMAT_VERSION == 2
    assert a["toolkit_version"] == "9.9" and a["command"] == "dass-distill cache --x 1"
    assert a["created_utc"].endswith("Z")
    assert clip_ids()[3] in r and "nope" not in r


def test_on_disk_layout(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "c.h5"
    data = make_cache(path, rng)["ast"]
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == FORMAT_NAME and int(f.attrs["format_version"]) == 2
        assert int(f["views"].attrs["count"]) == 1 and f["views"].attrs["augment"] == "null"
        assert "views/params" not in f
        assert json.loads(f["teachers/ast"].attrs["storage"]) == {"kind": "dense"}
        assert f["clips/id"].asstr()[()].tolist() == clip_ids()
        assert f["label_map/name"].asstr()[()].tolist() == labels()[1]
        ds = f["teachers/ast/logits"]
        assert ds.dtype == np.float16 and ds.shape == (N, 1, C) and ds.chunks == (CHUNK, 1, C)
        assert ds.compression == "lzf"
        assert np.isnan(ds.fillvalue)
        np.testing.assert_array_equal(ds[:, 0], data.astype(np.float16))
        assert f["teachers/ast/written"].dtype == np.uint8
        assert f["teachers/ast/written"][()].tolist() == [1] * N
        assert json.loads(f["teachers/ast"].attrs["provenance"]) == PROV
        assert json.loads(f["teachers/ast"].attrs["members"]) == ["ast"]


def test_multiple_teachers(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "c.h5"
    prov2 = {"name": "htsat", "kind": "htsat", "sample_rate": 32000}
    data = make_cache(path, rng, teachers={"ast": PROV, "htsat": prov2})
    r = LogitCacheReader(path)
    assert r.teachers == ["ast", "htsat"]
    ids = clip_ids()
    for t in ("ast", "htsat"):
        np.testing.assert_array_equal(r.get(ids, t), fp16(data[t]))
    assert not np.allclose(data["ast"], data["htsat"])
    assert r.provenance("htsat") == prov2
    with pytest.raises(ValueError, match="several teachers"):
        r.get(ids[:2])
    with pytest.raises(KeyError, match="'sslam'"):
        r.get(ids[:2], "sslam")


@pytest.mark.parametrize("cache_chunks", [0, 2, 64])
def test_random_order_across_chunk_boundaries(tmp_path, cache_chunks):
    rng = np.random.default_rng(3)
    path = tmp_path / "c.h5"
    data = fp16(make_cache(path, rng)["ast"])
    ids = clip_ids()
    r = LogitCacheReader(path, cache_chunks=cache_chunks)
    assert r.chunk_rows() == CHUNK
    for size in (1, 3, 7, 8, 13, 50):
        for _ in range(5):
            sel = rng.choice(N, size=size, replace=False)
            np.testing.assert_array_equal(r.get([ids[i] for i in sel]), data[sel])
    # Rows straddling every chunk boundary, the partial last chunk, and repeated ids.
    sel = np.array([6, 7, 13, 14, 48, 49, 0, 7, 7, 49])
    np.testing.assert_array_equal(r.get([ids[i] for i in sel]), data[sel])
    assert len(r._lru) <= cache_chunks
    assert r.get([]).shape == (0, C)


def test_default_chunking_and_compression_options(tmp_path):
    rows = default_chunk_rows(100_000, 527)
    assert 200 * 1024 <= rows * 527 * 2 <= 512 * 1024
    assert default_chunk_rows(10, 527) == 10
    rng = np.random.default_rng(4)
    for comp, expect in (("gzip", "gzip"), (None, None), ("none", None)):
        path = tmp_path / f"c-{comp}.h5"
        data = make_cache(path, rng, compression=comp, chunk_rows=None)["ast"]
        r = LogitCacheReader(path)
        info = r.storage_info()
        assert info["compression"] == expect
        assert info["chunks"] == (N, 1, C)  # default chunk rows clamp to the clip count
        np.testing.assert_array_equal(r.get(clip_ids()[::-1]), fp16(data)[::-1])


# -- unwritten, failed, missing --------------------------------------------------------


def test_unwritten_and_failed_rows(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "c.h5"
    ids = clip_ids()
    x = random_logits(rng)
    lids, lnames = labels()
    written = [i for i in range(N) if i % 5 != 0]
    with LogitCacheWriter(path, ids, lids, lnames, {"ast": PROV}, chunk_rows=CHUNK) as w:
        w.write("ast", [ids[i] for i in written], x[written])
        w.add_failed(ids[0], "soundfile: Error opening 'a.flac': Format not recognised")
        w.add_failed(ids[5], "empty audio (0 samples)")
        expected_missing = [ids[i] for i in range(10, N, 5)]
        assert w.missing("ast") == expected_missing
    assert path.exists() and not (tmp_path / "c.h5.partial").exists()

    r = LogitCacheReader(path)
    assert r.failed == {
        ids[0]: "soundfile: Error opening 'a.flac': Format not recognised",
        ids[5]: "empty audio (0 samples)",
    }
    np.testing.assert_array_equal(r.get([ids[i] for i in written]), fp16(x[written]))
    with pytest.raises(KeyError, match="never written"):
        r.get([ids[1], ids[10]])
    with pytest.raises(KeyError, match="failed during caching: empty audio"):
        r.get([ids[5]])
    with pytest.raises(KeyError, match="not in logit cache"):
        r.get(["no-such-clip"])
    with pytest.raises(TypeError):
        r.get(ids[1])  # a bare string is not a list of ids
    assert r.num_written() == len(written)
    assert r.has_logits(ids[1]) and not r.has_logits(ids[10]) and not r.has_logits("zz")
    # Unwritten rows hold the NaN fill value on disk and 0 in the mask.
    with h5py.File(path, "r") as f:
        assert np.isnan(f["teachers/ast/logits"][10]).all()
        assert not np.isnan(f["teachers/ast/logits"][11]).any()
        assert f["teachers/ast/written"][10] == 0

    missing, extra = r.coverage([ids[1], ids[5], ids[10], "local-only"] + ids[20:])
    assert missing == [ids[5], ids[10], "local-only"] + [ids[i] for i in range(20, N, 5)]
    assert extra == [ids[i] for i in written if i < 20 and i != 1]

    s = summarize(r)
    t = s["teachers"]["ast"]
    assert (s["rows"], s["failed"], t["written"], t["failed"], t["missing"]) == (N, 2, 40, 2, 8)
    assert t["dtype"] == "float16" and t["compression"] == "lzf" and t["chunk_shape"] == [CHUNK, 1, C]
    assert t["bytes_on_disk"] > 0 and t["bytes_per_row"] == t["bytes_on_disk"] / 40
    assert t["provenance"] == PROV and t["members"] == ["ast"]
    assert s["file_bytes"] == path.stat().st_size
    json.dumps(s)  # plain data, ready for rich or --json


def test_coverage_with_several_teachers(tmp_path):
    rng = np.random.default_rng(6)
    path = tmp_path / "c.h5"
    ids = clip_ids()
    lids, lnames = labels()
    x = random_logits(rng)
    with LogitCacheWriter(path, ids, lids, lnames, {"a": {}, "b": {}}, chunk_rows=CHUNK) as w:
        w.write("a", ids, x)
        w.write("b", ids[:30], x[:30])
    r = LogitCacheReader(path)
    assert r.coverage(ids, teacher="a") == ([], [])
    assert r.coverage(ids) == (ids[30:], [])
    assert r.coverage(ids[:10], teacher="b") == ([], ids[10:30])


def test_provenance_and_members_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    path = tmp_path / "c.h5"
    ens = {
        "name": "ast+htsat",
        "kind": "ensemble",
        "members": ["ast", "htsat"],
        "combine": "mean_prob",
        "member_provenance": [PROV, {"kind": "htsat", "sha256": "cd" * 32}],
        "weights": [0.5, 0.5],
        "flag": True,
        "none": None,
    }
    make_cache(path, rng, teachers={"ast": PROV, "ens": ens})
    r = LogitCacheReader(path)
    assert r.provenance("ast") == PROV
    assert r.provenance("ens") == ens
    assert r.members("ast") == ["ast"]
    assert r.members("ens") == ["ast", "htsat"]
    r.provenance("ens")["kind"] = "changed"  # a copy: the reader is not mutated
    assert r.provenance("ens")["kind"] == "ensemble"


# -- writer validation and crash safety ------------------------------------------------


def test_writer_rejects_bad_input(tmp_path):
    ids = clip_ids(10)
    lids, lnames = labels()
    p = tmp_path / "c.h5"
    with pytest.raises(ValueError, match="empty"):
        LogitCacheWriter(p, [], lids, lnames, {"ast": {}})
    with pytest.raises(ValueError, match="duplicate clip id 'Y00003"):
        LogitCacheWriter(p, ids + [ids[3]], lids, lnames, {"ast": {}})
    with pytest.raises(ValueError, match="label_names"):
        LogitCacheWriter(p, ids, lids, lnames[:-1], {"ast": {}})
    with pytest.raises(ValueError, match="teachers is empty"):
        LogitCacheWriter(p, ids, lids, lnames, {})
    with pytest.raises(ValueError, match="teacher name"):
        LogitCacheWriter(p, ids, lids, lnames, {"a/b": {}})
    with pytest.raises(ValueError, match="JSON"):
        LogitCacheWriter(p, ids, lids, lnames, {"ast": {"path": object()}})
    with pytest.raises(ValueError, match="compression"):
        LogitCacheWriter(p, ids, lids, lnames, {"ast": {}}, compression="zstd")
    assert not p.exists() and not (tmp_path / "c.h5.partial").exists()

    rng = np.random.default_rng(8)
    x = random_logits(rng, 10)
    with LogitCacheWriter(p, ids, lids, lnames, {"ast": {}}) as w:
        with pytest.raises(ValueError, match="shape"):
            w.write("ast", ids[:3], x[:2])
        with pytest.raises(ValueError, match="shape"):
            w.write("ast", ids[:3], x[:3, :-1])
        with pytest.raises(KeyError, match="unknown teacher"):
            w.write("htsat", ids[:3], x[:3])
        with pytest.raises(KeyError, match="'other'"):
            w.write("ast", ["other"], x[:1])
        with pytest.raises(ValueError, match="twice"):
            w.write("ast", [ids[0], ids[0]], x[:2])
        bad = x[:4].copy()
        bad[2, 5] = np.nan
        with pytest.raises(ValueError, match=f"clip {ids[2]!r}"):
            w.write("ast", ids[:4], bad)
        big = x[:4].copy()
        big[1, 0] = 1e6  # finite in float64, inf in float16
        with pytest.raises(ValueError, match=f"clip {ids[1]!r}.*float16 range"):
            w.write("ast", ids[:4], big)
        with pytest.raises(KeyError):
            w.add_failed("other", "x")
        assert w.missing("ast") == ids  # nothing from the rejected calls was stored
        w.write("ast", ids, x.astype(np.float32))
    np.testing.assert_array_equal(LogitCacheReader(p).get(ids), fp16(x))
    with pytest.raises(RuntimeError, match="closed"):
        w.write("ast", ids, x)


def test_crash_inside_with_keeps_partial_and_previous_file(tmp_path):
    rng = np.random.default_rng(9)
    path = tmp_path / "c.h5"
    old = make_cache(path, rng)["ast"]  # a finished cache from an earlier run
    ids = clip_ids()
    lids, lnames = labels()
    x = random_logits(rng)
    with pytest.raises(RuntimeError, match="boom"):
        with LogitCacheWriter(path, ids, lids, lnames, {"ast": PROV}, chunk_rows=CHUNK) as w:
            w.write("ast", ids[:20], x[:20])
            assert w.partial_path.exists()
            raise RuntimeError("boom")
    partial = tmp_path / "c.h5.partial"
    assert partial.exists()
    # The finished file is untouched by the crashed run.
    np.testing.assert_array_equal(LogitCacheReader(path).get(ids), fp16(old))
    # The .partial file is a consistent cache of what was written before the crash.
    r = LogitCacheReader(partial)
    assert r.num_written() == 20
    np.testing.assert_array_equal(r.get(ids[:20]), fp16(x[:20]))


def test_crash_without_previous_file(tmp_path):
    path = tmp_path / "sub" / "c.h5"
    lids, lnames = labels()
    with pytest.raises(KeyboardInterrupt):
        with LogitCacheWriter(path, clip_ids(), lids, lnames, {"ast": PROV}):
            assert not path.exists()  # never visible at the final path while writing
            raise KeyboardInterrupt
    assert not path.exists()
    assert (tmp_path / "sub" / "c.h5.partial").exists()
    with pytest.raises(FileNotFoundError, match="did not finish"):
        LogitCacheReader(path)


# -- refusing files ---------------------------------------------------------------------


def test_unknown_version_is_refused(tmp_path):
    rng = np.random.default_rng(10)
    path = tmp_path / "c.h5"
    make_cache(path, rng)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = np.int64(3)
    with pytest.raises(CacheFormatError) as ei:
        LogitCacheReader(path)
    msg = str(ei.value)
    assert str(path) in msg and "version 3" in msg and "reads versions 1, 2" in msg
    assert "upgrade dass-distill" in msg and "re-create" in msg and "\n" not in msg


def test_wrong_format_and_missing_dataset_are_refused(tmp_path):
    rng = np.random.default_rng(11)
    path = tmp_path / "c.h5"
    make_cache(path, rng)
    with h5py.File(path, "r+") as f:
        del f["teachers/ast/written"]
    with pytest.raises(CacheFormatError, match="missing dataset /teachers/ast/written"):
        LogitCacheReader(path)
    with h5py.File(path, "r+") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(CacheFormatError, match="not a dass-distill logit cache"):
        LogitCacheReader(path)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(CacheFormatError, match="no 'format' attribute"):
        LogitCacheReader(other)


def test_not_hdf5_and_truncated_files_are_refused(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("clip_id,logits\n")
    with pytest.raises(CacheFormatError, match="not an HDF5 file"):
        LogitCacheReader(text)
    rng = np.random.default_rng(12)
    path = tmp_path / "c.h5"
    make_cache(path, rng)
    size = path.stat().st_size
    for keep in (size // 2, 600):
        cut = tmp_path / f"cut{keep}.h5"
        cut.write_bytes(path.read_bytes()[:keep])
        with pytest.raises(CacheFormatError) as ei:
            LogitCacheReader(cut)
        assert str(cut) in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(FileNotFoundError):
        LogitCacheReader(tmp_path / "absent.h5")


# -- pickling, processes ----------------------------------------------------------------


def test_pickling_drops_handle(tmp_path):
    rng = np.random.default_rng(13)
    path = tmp_path / "c.h5"
    data = fp16(make_cache(path, rng)["ast"])
    ids = clip_ids()
    r = LogitCacheReader(path)
    assert r._file is None  # validated, then closed
    r.get(ids[:3])
    assert r._file is not None and len(r._lru) > 0
    r2 = pickle.loads(pickle.dumps(r))
    assert r2._file is None and len(r2._lru) == 0
    np.testing.assert_array_equal(r2.get(ids[::-1]), data[::-1])
    assert r2.clip_ids == ids and r2.provenance() == PROV and ids[7] in r2
    r.close()
    assert r._file is None
    np.testing.assert_array_equal(r.get(ids[5:9]), data[5:9])  # re-opens after close


def test_reopens_when_pid_changes(tmp_path, monkeypatch):
    rng = np.random.default_rng(14)
    path = tmp_path / "c.h5"
    data = fp16(make_cache(path, rng)["ast"])
    ids = clip_ids()
    r = LogitCacheReader(path)
    r.get(ids[:2])
    first = r._file
    real_pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: real_pid + 1)
    np.testing.assert_array_equal(r.get(ids[40:]), data[40:])
    assert r._file is not first and r._pid == real_pid + 1
    assert first.id.valid  # the "parent's" handle was not closed by the "child"
    first.close()


class _CacheDataset:
    """A map-style dataset (DataLoader needs only __len__/__getitem__) defined at module
    level so that spawned workers can unpickle it."""

    def __init__(self, reader, ids):
        self.reader, self.ids = reader, ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        row = self.reader.get([self.ids[i]])[0]
        # each worker uses its own HDF5 handle; a contiguous cache's read-only memory map is
        # valid in a forked child and rebuilt in a spawned one
        assert self.reader._pid == os.getpid() or self.reader._maps
        return row, os.getpid()


@pytest.mark.parametrize(
    "start_method",
    [pytest.param(m, marks=pytest.mark.skipif(m not in mp.get_all_start_methods(), reason=f"{m} not available"))
     for m in ("fork", "spawn")],
)
@pytest.mark.parametrize("layout", ["chunked", "contiguous"])
def test_dataloader_workers(tmp_path, start_method, layout):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(15)
    path = tmp_path / "c.h5"
    make_cache(path, rng, teachers={"ast": PROV}, layout=layout, compression="lzf" if layout == "chunked" else None)
    ids = clip_ids()
    order = [ids[i] for i in rng.permutation(N)]
    r = LogitCacheReader(path)
    direct = r.get(order)  # the parent opens a handle (or a memory map) before the workers start
    assert (r._file is not None) if layout == "chunked" else ("teachers/ast/logits" in r._maps)
    loader = torch.utils.data.DataLoader(
        _CacheDataset(r, order), batch_size=4, num_workers=2,
        multiprocessing_context=start_method, shuffle=False,
    )
    rows, pids = [], set()
    for x, pid in loader:
        rows.append(x.numpy())
        pids.update(pid.tolist())
    np.testing.assert_array_equal(np.concatenate(rows), direct)
    assert os.getpid() not in pids and len(pids) == 2
    # The parent's handle still works after the workers are gone.
    np.testing.assert_array_equal(r.get(order[:5]), direct[:5])


# --------------------------------------------------------------------------- contiguous layout
def test_contiguous_layout_is_memory_mapped_and_exact(tmp_path):
    rng = np.random.default_rng(21)
    path = tmp_path / "c.h5"
    data = make_cache(path, rng, teachers={"ast": PROV, "htsat": PROV}, compression=None, layout="contiguous")
    with h5py.File(path, "r") as f:
        ds = f["teachers/ast/logits"]
        assert ds.chunks is None and ds.compression is None and ds.id.get_offset() is not None
    r = LogitCacheReader(path)
    ids = clip_ids()
    order = [ids[i] for i in rng.permutation(N)] + [ids[3], ids[3]]  # any order, repeats allowed
    for t in ("ast", "htsat"):
        expected = fp16(data[t])[[ids.index(c) for c in order]]
        np.testing.assert_array_equal(r.get(order, t), expected)
    assert set(r._maps) == {"teachers/ast/logits", "teachers/htsat/logits"} and r._file is None  # gathered from the maps, HDF5 never opened
    assert r.storage_info("ast")["layout"] == "contiguous (memory-mapped reads)"
    r2 = pickle.loads(pickle.dumps(r))  # spawn-style hand-off: maps are not pickled, rebuilt on use
    assert r2._maps == {}
    np.testing.assert_array_equal(r2.get(order, "ast"), r.get(order, "ast"))


def test_contiguous_layout_with_unwritten_rows_and_errors(tmp_path):
    rng = np.random.default_rng(22)
    path = tmp_path / "c.h5"
    ids = clip_ids()
    x = random_logits(rng)
    lids, lnames = labels()
    with pytest.raises(ValueError, match="contiguous layout cannot be compressed"):
        LogitCacheWriter(path, ids, lids, lnames, {"ast": PROV}, layout="contiguous")
    with pytest.raises(ValueError, match="layout must be"):
        LogitCacheWriter(path, ids, lids, lnames, {"ast": PROV}, layout="sparse")
    with LogitCacheWriter(path, ids, lids, lnames, {"ast": PROV, "htsat": PROV}, compression=None,
                          layout="contiguous") as w:
        w.write("ast", ids[:10], x[:10])  # htsat: nothing written, its block is never allocated
    r = LogitCacheReader(path)
    np.testing.assert_array_equal(r.get(ids[:10], "ast"), fp16(x[:10]))
    with pytest.raises(KeyError, match="never written"):
        r.get(ids[9:11], "ast")
    with pytest.raises(KeyError, match="never written"):
        r.get(ids[:1], "htsat")
    assert r._layout["teachers/htsat/logits"][1] is None  # unallocated: no offset to map
