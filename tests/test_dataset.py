import json

import numpy as np
import torch
from torch.utils.data import DataLoader

from dass_distill.data.augment import SpecAugment, TimeShift
from dass_distill.data.dataset import ClipDataset, TeacherTargets, collate
from dass_distill.data.manifest import load_manifest
from dass_distill.logit_cache import LogitCacheReader, LogitCacheWriter
from dass_distill.frontend import KaldiFbank


def test_batches_carry_cached_logits_through_workers(tmp_path, synth_data):
    manifest = load_manifest(synth_data["train_manifest"])
    lm = manifest.label_map
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((len(manifest), len(lm))).astype(np.float32) * 3
    with LogitCacheWriter(tmp_path / "c.h5", manifest.ids, list(lm.ids), list(lm.names), {"t": {"name": "t"}},
                          chunk_rows=5) as w:
        w.write("t", manifest.ids, logits)
    expected = dict(zip(manifest.ids, logits.astype(np.float16).astype(np.float32)))
    labels_only = {manifest.ids[3]}
    ds = ClipDataset(manifest, KaldiFbank(target_length=120), 16000,
                     TeacherTargets(LogitCacheReader(tmp_path / "c.h5"), "t"), labels_only_ids=labels_only)
    loader = DataLoader(ds, batch_size=5, num_workers=2, collate_fn=collate, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    seen = set()
    for batch in loader:
        assert batch.features.shape[1:] == (120, 128) and batch.labels.shape[1] == len(lm)
        for cid, row, lab in zip(batch.ids, batch.teacher_logits, batch.labels):
            seen.add(cid)
            if cid in labels_only:
                assert torch.isnan(row).all()
            else:
                np.testing.assert_array_equal(row.numpy(), expected[cid])
            np.testing.assert_array_equal(lab.numpy(), manifest.label_map.encode(manifest.clips[manifest.ids.index(cid)].labels))
    assert seen == set(manifest.ids)


def test_unreadable_clip_is_reported_not_fatal(tmp_path, synth_data):
    manifest = load_manifest(synth_data["train_manifest"])
    doc = json.loads(open(synth_data["train_manifest"]).read())
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    for entry in doc["data"]:
        entry["wav"] = str(manifest.source.parent / entry["wav"])
    doc["data"] = doc["data"][:3] + [{"wav": str(tmp_path / "bad.wav"), "labels": doc["data"][0]["labels"]}]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    m = load_manifest(path, manifest.label_map)
    batch = collate(ClipDataset(m, KaldiFbank(target_length=50), 16000).__getitems__([0, 1, 2, 3]))
    assert len(batch) == 3 and batch.errors[0][0] == "bad" and "unreadable audio" in batch.errors[0][1]


def test_spec_augment_masks_per_example():
    torch.manual_seed(0)
    x = torch.randn(6, 200, 128) + 5.0
    out = SpecAugment(freq_mask=30, time_mask=50)(x)
    assert out.shape == x.shape
    zero_freq = (out == 0).all(dim=1).sum(dim=1)  # masked mel bins per example
    zero_time = (out == 0).all(dim=2).sum(dim=1)  # masked frames per example
    assert (zero_freq <= 30).all() and (zero_time <= 50).all()
    assert len(set(zero_freq.tolist())) > 1 or len(set(zero_time.tolist())) > 1  # masks differ per example
    kept = out != 0
    assert torch.equal(out[kept], x[kept])


def test_time_shift_rolls_each_example_by_its_own_bounded_shift():
    torch.manual_seed(0)
    x = torch.randn(16, 120, 8)
    out = TimeShift(25)(x)
    shifts = []
    for a, b in zip(x, out):
        found = [s for s in range(-25, 26) if torch.equal(torch.roll(a, s, dims=0), b)]
        assert len(found) == 1  # a whole roll of the example, within the bound
        shifts += found
    assert len(set(shifts)) > 4  # per example, not one shift for the batch
    state = torch.get_rng_state()
    assert TimeShift(0)(x) is x and torch.equal(torch.get_rng_state(), state)  # off: no draw, runs unchanged
