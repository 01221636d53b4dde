"""Augmented views with exact replay, top-k storage, and sharded resumable caching
(a writer killed with SIGKILL, then resumed; two processes under torchrun)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from teacher_checkpoints import write_original_teachers
from helpers import clean_env

from dass_distill.caching import build_cache
from dass_distill.data.dataset import ClipDataset, TeacherTargets
from dass_distill.data.manifest import load_manifest
from dass_distill.data.views import ViewSpec, draw_views, render_view
from dass_distill.logit_cache import LogitCacheReader
from dass_distill.frontend import KaldiFbank
from dass_distill.teachers import load_teacher

VIEWS = ViewSpec(count=3, seed=5, mixup=0.7, max_shift_frames=40, max_gain_db=6.0, freq_mask=30, time_mask=60)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return write_original_teachers(tmp_path_factory.mktemp("teachers"))


def _contents(path: Path) -> dict:
    """Every dataset and attribute of an HDF5 file, except when and how it was started."""
    out = {}
    with h5py.File(path, "r") as f:
        for k, v in f.attrs.items():
            if k not in ("created_utc", "command"):
                out[f"@{k}"] = v
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset)
                     else out.update({f"{name}@{k}": v for k, v in obj.attrs.items()}))
    return out


def assert_same_contents(a: Path, b: Path) -> None:
    ca, cb = _contents(a), _contents(b)
    assert sorted(ca) == sorted(cb)
    for k in ca:
        x, y = ca[k], cb[k]
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape, k
            if x.dtype == object:  # strings
                assert x.tolist() == y.tolist(), f"{k} differs"
            else:
                assert x.tobytes() == y.tobytes(), f"{k} differs"
        else:
            assert x == y, k


def test_draw_views_is_deterministic_and_in_range():
    a = draw_views(VIEWS, 7, 50)
    assert a.tobytes() == draw_views(VIEWS, 7, 50).tobytes()
    assert a.tobytes() != draw_views(VIEWS, 8, 50).tobytes()
    many = np.concatenate([draw_views(VIEWS, r, 50) for r in range(50)])
    mixed = many["partner"] >= 0
    assert 0.5 < mixed.mean() < 0.9 and (many["partner"] != np.repeat(np.arange(50), 3)).all()
    assert ((many["lam"][~mixed]) == 1).all() and (0 < many["lam"][mixed]).all() and (many["lam"][mixed] < 1).all()
    assert (np.abs(many["shift"]) <= 40).all() and (np.abs(many["gain_db"].astype(float)) <= 6).all()
    assert (many["freq_start"].astype(int) + many["freq_width"] <= 128).all() and (many["freq_width"] < 30).all()
    assert (many["time_start"].astype(int) + many["time_width"] <= 1024).all() and (many["time_width"] < 60).all()
    with pytest.raises(ValueError, match="mixup probability"):
        ViewSpec(mixup=1.5)


def test_render_view_mixes_shifts_and_scales():
    wave, partner = torch.randn(16000), torch.randn(8000)
    p = draw_views(VIEWS, 0, 2)[0].copy()
    p["partner"], p["lam"], p["shift"], p["gain_db"] = 1, 0.75, 3, 6.0
    out = render_view(wave, partner, p, 16000, VIEWS)
    lam = float(np.float16(0.75))
    expected = torch.roll(lam * wave + (1 - lam) * torch.nn.functional.pad(partner, (0, 8000)), 480) * 10 ** (6 / 20)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="partner"):
        render_view(wave, None, p, 16000, VIEWS)


def test_cached_views_replay_bit_exact(tmp_path, synth_data, ckpts):
    """The student's data pipeline rebuilds exactly the features the teacher saw for every view."""
    manifest = load_manifest(synth_data["train_manifest"])
    teacher = load_teacher(f"ast:{ckpts['ast']}")
    seen: list[torch.Tensor] = []
    teacher.model.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    out = tmp_path / "views.h5"
    report = build_cache([teacher], manifest, out, batch_size=4, num_workers=0, views=VIEWS, storage="topk:5",
                         block_clips=5)
    assert report.written == {"ast": len(manifest)}
    teacher_feats = torch.cat(seen)  # one row per view, clips in row order, views in order
    assert teacher_feats.shape[0] == len(manifest) * VIEWS.count

    reader = LogitCacheReader(out)
    assert reader.views == 3 and reader.augmented and ViewSpec.from_dict(reader.augment) == VIEWS
    params = reader.view_params(manifest.ids, np.zeros(len(manifest), int))
    assert (params["partner"] >= 0).any() and (params["shift"] != 0).any() and (params["freq_width"] > 0).any()
    fe = KaldiFbank(target_length=VIEWS.target_frames)
    ds = ClipDataset(manifest, fe, 16000, TeacherTargets(reader, "ast"), views=VIEWS)
    pairs = [(i, v) for i in range(len(manifest)) for v in range(VIEWS.count)]
    items = ds.__getitems__(pairs)
    for k, ((i, v), item) in enumerate(zip(pairs, items)):
        assert torch.equal(item["features"], teacher_feats[k]), f"clip {i} view {v}: replay differs"
        # teacher target: the cached logits of this very view
        np.testing.assert_array_equal(item["teacher_logits"].numpy(), reader.get([manifest.ids[i]], views=[v])[0])
        p = reader.view_params([manifest.ids[i]], [v])[0]
        if p["partner"] >= 0:  # labels mixed with the stored weight
            j = manifest.ids.index(reader.clip_id(int(p["partner"])))
            lam = float(p["lam"])
            expected = lam * manifest.targets()[i] + (1 - lam) * manifest.targets()[j]
            np.testing.assert_allclose(item["labels"].numpy(), expected, rtol=1e-6)
    # and the cached logits are the teacher's on those features (top-k of them, fp16)
    with torch.no_grad():
        live = teacher.model(teacher_feats[:6]).numpy()
    stored = reader.get([manifest.ids[0]] * 3 + [manifest.ids[1]] * 3, views=[0, 1, 2, 0, 1, 2])
    top = np.argsort(-live, axis=1)[:, :5]
    np.testing.assert_allclose(np.take_along_axis(stored, top, 1), np.take_along_axis(live, top, 1), rtol=2e-3, atol=2e-3)


def test_views_with_an_htsat_teacher_use_its_own_grid(tmp_path, synth_data, ckpts):
    manifest = load_manifest(synth_data["train_manifest"]).subset(set(load_manifest(synth_data["train_manifest"]).ids[:6]))
    spec = ViewSpec(count=2, seed=1, mixup=1.0, freq_mask=60, time_mask=100)
    out = tmp_path / "h.h5"
    build_cache([load_teacher(f"htsat:{ckpts['htsat']}"), load_teacher(f"ast:{ckpts['ast']}")], manifest, out,
                batch_size=4, num_workers=0, views=spec)
    reader = LogitCacheReader(out)
    a = reader.get(manifest.ids, "htsat", views=[0] * 6)
    b = reader.get(manifest.ids, "htsat", views=[1] * 6)
    assert np.isfinite(a).all() and not np.array_equal(a, b)  # the views differ
    assert reader.storage("htsat").kind == "dense" and reader.views == 2


def _cache_cmd(ckpts, manifest, out, *extra):
    return [sys.executable, "-m", "dass_distill.cli", "cache", "--teacher", f"ast:{ckpts['ast']}",
            "--data", str(manifest), "--out", str(out), "--num-workers", "0", "--batch-size", "2",
            "--block-clips", "2", "--views", "4", "--view-shift", "20", "--storage", "topk:5", *extra]


ENV = {**clean_env(), "DS_ACCELERATOR": "cpu", "DASS_DISTILL_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_file(tmp_path, synth_data, ckpts):
    manifest = synth_data["train_manifest"]
    ref = tmp_path / "ref.h5"
    subprocess.run(_cache_cmd(ckpts, manifest, ref), env=ENV, check=True, capture_output=True, timeout=600)
    assert not Path(str(ref) + ".parts").exists()

    out = tmp_path / "out.h5"
    parts = Path(str(out) + ".parts")
    proc = subprocess.Popen(_cache_cmd(ckpts, manifest, out), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(parts.glob("block-*.npz"))) < 3 and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the writer finished before it could be killed"
    done = [p for p in parts.glob("block-*.npz") if not p.name.endswith(".tmp.npz")]
    assert 0 < len(done) < 12 and not out.exists()
    (parts / "block-0000000999.tmp.npz").write_bytes(b"half a segment")  # what a kill mid-write leaves

    # another command on the same parts folder is refused, naming the fix
    other = subprocess.run(_cache_cmd(ckpts, manifest, out)[:-2] + ["--storage", "dense"], env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert other.returncode != 0 and "partial results from a different run" in other.stderr

    resumed = subprocess.run(_cache_cmd(ckpts, manifest, out), env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming: {len(done)} of 12 blocks already done" in resumed.stderr
    assert not parts.exists()
    assert_same_contents(out, ref)
    r = LogitCacheReader(out)
    assert r.views == 4 and r.storage().describe() == {"kind": "topk", "k": 5} and r.num_written() == 24


@pytest.mark.slow
def test_two_processes_under_torchrun_merge_to_the_single_process_file(tmp_path, synth_data, ckpts):
    manifest = synth_data["train_manifest"]
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    subprocess.run(_cache_cmd(ckpts, manifest, one), env=ENV, check=True, capture_output=True, timeout=600)
    proc = subprocess.run(_cache_cmd(ckpts, manifest, two, "--procs", "2"), env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_contents(one, two)


def test_verify_replays_views_and_catches_a_tampered_top_k_value(tmp_path, synth_data, ckpts):
    from dass_distill.cache_check import check_cache

    manifest = load_manifest(synth_data["train_manifest"])
    out = tmp_path / "v.h5"
    build_cache([load_teacher(f"ast:{ckpts['ast']}")], manifest, out, batch_size=4, num_workers=0, views=VIEWS,
                storage="topk:5")
    report = check_cache(out, manifest, verify=10)
    (v,) = report.verifications
    assert report.ok and len(v.clips) == 10 and 0 < v.max_abs_diff < 0.02 and v.max_excess <= 1e-3
    with h5py.File(out, "r+") as f:  # every view's largest stored logit off by 0.5
        ds = f["teachers/ast/topk_values"]
        ds[:, :, 0] = ds[:, :, 0] + np.float16(0.5)
    (v,) = check_cache(out, manifest, verify=4).verifications
    assert not v.ok and v.max_abs_diff == pytest.approx(0.5, abs=0.02)


@pytest.mark.slow
def test_training_replays_cached_views(tmp_path, synth_data, ckpts):
    from helpers import cli

    train = synth_data["train_manifest"]
    out = tmp_path / "v.h5"
    cli("cache", "--teacher", f"ast:{ckpts['ast']}", "--data", train, "--out", out, "--num-workers", 0,
        "--views", 2, "--target-frames", 150, "--view-time-mask", 30, "--storage", "topk:4")
    info = cli("cache-info", out).stderr
    assert "2 per clip, augmented" in info and "top-k 4, 12 B/view + 16 B replay" in info
    refused = cli("cache", "--teacher", f"ast:{ckpts['ast']}", "--data", train, "--out", tmp_path / "x.h5",
                  "--storage", "topk:0", check=False)
    assert refused.returncode == 2 and "needs 1 <= k < number of classes" in refused.stderr
    bad = cli("train", "--model", "dass_tiny", "--output-dir", tmp_path / "bad", f"data.train={train}",
              f"distill.cache={out}", "optim.max_steps=1", "data.target_length=200", "data.num_workers=0", check=False)
    assert bad.returncode != 0 and "set data.target_length=150" in bad.stderr
    proc = cli("train", "--model", "dass_tiny", "--output-dir", tmp_path / "run", f"data.train={train}",
               f"distill.cache={out}", "optim.max_steps=3", "data.target_length=150", "data.num_workers=1",
               "optim.batch_size=4", "optim.warmup_steps=1")
    assert "replaying 2 cached views per clip" in proc.stderr
    import json

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["distilled"] and summary["steps"] == 3 and summary["skipped_clips"] == 0


def test_a_block_of_unreadable_clips_is_recorded_as_failed(tmp_path, synth_data, ckpts):
    import json

    src = Path(synth_data["train_manifest"])
    doc = json.loads(src.read_text())
    for entry in doc["data"]:
        entry["wav"] = str(src.parent / entry["wav"])
    for k, entry in enumerate(doc["data"][:2]):  # the whole first block
        bad = tmp_path / f"broken{k}.wav"
        bad.write_bytes(b"RIFF not really audio")
        entry["wav"] = str(bad)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    (tmp_path / "class_labels_indices.csv").write_text(
        (Path(synth_data["train_manifest"]).parent / "class_labels_indices.csv").read_text())
    manifest = load_manifest(path)
    out = tmp_path / "c.h5"
    report = build_cache([load_teacher(f"ast:{ckpts['ast']}")], manifest, out, num_workers=0, block_clips=2,
                         views=ViewSpec(count=2, mixup=1.0), storage="topk:3")
    assert sorted(report.failed) == sorted(manifest.ids[:2]) and report.written == {"ast": len(manifest) - 2}
    reader = LogitCacheReader(out)
    assert list(reader.failed) == manifest.ids[:2] and not reader.written()[:2].any() and reader.written()[2:].all()
    # views that drew a broken partner were kept without mixup, and say so
    partners = reader.view_params(manifest.ids[2:], np.zeros(len(manifest) - 2, int))["partner"]
    assert not np.isin(partners, [0, 1]).any()
