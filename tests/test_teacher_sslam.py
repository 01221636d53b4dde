"""SSLAM teacher: forward pass against an independent reference, fp16 weights, both
checkpoint layouts, long clips and checkpoint errors, on a small random-weight model."""

import argparse
import copy
import hashlib
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from dass_distill.teachers import CheckpointError, ClipPolicy
from dass_distill.teachers.sslam import (
    NORM_MEAN, NORM_STD, SSLAMClassifier, SSLAMConfig, SSLAMTeacher, fairseq_cfg, save_sslam_checkpoint,
    save_sslam_safetensors, sincos_positions,
)

SR = 16000
SMALL = SSLAMConfig(embed_dim=32, depth=2, num_heads=2, num_classes=12, target_length=1024)
IMG = "model.modality_encoders.IMAGE."


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Weights large enough that logits are O(1), so fp16 rounding shows in them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("extra_tokens"):
                p.copy_(noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif p.dim() == 1:  # LayerNorm gains
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(noise / math.sqrt(p[0].numel()))
    return model


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(unrounded fp32 model, fairseq .pt written from it, teacher loaded from that file)."""
    model = _randomize(SSLAMClassifier(SMALL), seed=0).eval()
    path = save_sslam_checkpoint(model, tmp_path_factory.mktemp("sslam") / "sslam_as2m.pt")
    return model, path, SSLAMTeacher.from_checkpoint(path)


@pytest.fixture(scope="module")
def waves():
    rng = np.random.default_rng(1)
    t = np.arange(10 * SR) / SR
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) * (t > 4)
    long = (0.05 * rng.standard_normal(10 * SR) + tone).astype(np.float32)
    short = (0.1 * rng.standard_normal(3 * SR)).astype(np.float32)  # padded to 1024 frames
    return [torch.from_numpy(long), torch.from_numpy(short)]


# ---------------------------------------------------------------- independent reference


def _formula_positions(dim: int, rows: int, cols: int) -> torch.Tensor:
    """2-D sin-cos from the formula, float64: token t*cols+f gets [sin(f w), cos(f w), sin(t w), cos(t w)]."""
    quarter = dim // 4
    omega = 10000.0 ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    t, f = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                          indexing="ij")
    a_f, a_t = f.reshape(-1, 1) * omega, t.reshape(-1, 1) * omega
    return torch.cat([a_f.sin(), a_f.cos(), a_t.sin(), a_t.cos()], dim=1)


def _reference_logits(sd: dict, cfg: SSLAMConfig, feats: torch.Tensor) -> torch.Tensor:
    """The classifier rebuilt from the saved state dict with torch's own post-LN encoder layer."""
    sd = {k: v.float() for k, v in sd.items()}
    b, d = feats.shape[0], cfg.embed_dim
    rows, cols = cfg.target_length // 16, cfg.num_mel_bins // 16
    x = F.conv2d(feats[:, None], sd[IMG + "local_encoder.proj.weight"], sd[IMG + "local_encoder.proj.bias"], stride=16)
    x = x.permute(0, 2, 3, 1).reshape(b, rows * cols, d)  # (time, freq) row-major
    # the released file stores the table in fp16, like every other weight
    x = x + _formula_positions(d, rows, cols).half().float()
    x = torch.cat([sd[IMG + "extra_tokens"].expand(b, -1, -1), x], dim=1)
    x = F.layer_norm(x, (d,), sd[IMG + "context_encoder.norm.weight"], sd[IMG + "context_encoder.norm.bias"], 1e-6)
    for i in range(cfg.depth):
        p = f"model.blocks.{i}."
        layer = nn.TransformerEncoderLayer(d, cfg.num_heads, cfg.mlp_hidden, dropout=0.0, activation="gelu",
                                           layer_norm_eps=1e-6, batch_first=True, norm_first=False)
        layer.load_state_dict({
            "self_attn.in_proj_weight": sd[p + "attn.qkv.weight"], "self_attn.in_proj_bias": sd[p + "attn.qkv.bias"],
            "self_attn.out_proj.weight": sd[p + "attn.proj.weight"],
            "self_attn.out_proj.bias": sd[p + "attn.proj.bias"],
            "linear1.weight": sd[p + "mlp.fc1.weight"], "linear1.bias": sd[p + "mlp.fc1.bias"],
            "linear2.weight": sd[p + "mlp.fc2.weight"], "linear2.bias": sd[p + "mlp.fc2.bias"],
            "norm1.weight": sd[p + "norm1.weight"], "norm1.bias": sd[p + "norm1.bias"],
            "norm2.weight": sd[p + "norm2.weight"], "norm2.bias": sd[p + "norm2.bias"],
        })
        x = layer.eval()(x)
    cls = F.layer_norm(x[:, 0], (d,), sd["fc_norm.weight"], sd["fc_norm.bias"], 1e-6)
    return F.linear(cls, sd["head.weight"], sd["head.bias"])


def _hf_features(waves: list[torch.Tensor]) -> torch.Tensor:
    from transformers import ASTFeatureExtractor

    fe = ASTFeatureExtractor(max_length=1024, mean=NORM_MEAN, std=NORM_STD)
    return fe([w.numpy() for w in waves], sampling_rate=SR, return_tensors="pt")["input_values"]


def test_logits_match_independent_reference(small, waves):
    _, path, teacher = small
    sd = torch.load(path, weights_only=True)["model"]
    feats = _hf_features(waves)
    torch.testing.assert_close(teacher.front_end(waves), feats, rtol=0, atol=2e-4)
    with torch.no_grad():
        ref = _reference_logits(sd, SMALL, feats)
        torch.testing.assert_close(teacher.model(feats), ref, rtol=1e-4, atol=1e-4)
    assert ref.abs().max() > 0.5  # the comparison is between non-trivial outputs
    # end to end from waveforms (our fbank differs from transformers' by float noise only)
    torch.testing.assert_close(teacher.window_logits(waves), ref, rtol=0, atol=1e-3)


def test_position_table_is_the_original_formula():
    full = SSLAMConfig()
    assert full.grid == (64, 8) and full.num_patches == 512 and full.max_positions == 6144
    table = sincos_positions(768, 768, 8)
    assert table.shape == (6144, 768) and table.dtype == torch.float32
    torch.testing.assert_close(table.double(), _formula_positions(768, 768, 8), rtol=0, atol=2e-4)


def test_fairseq_checkpoint_layout(small):
    model, path, teacher = small
    ckpt = torch.load(path, weights_only=True)  # plain-dict cfg: no unpickling needed
    assert set(ckpt) == {"cfg", "model", "optimizer_history", "extra_state"}
    sd = ckpt["model"]
    assert set(sd) == set(model.state_dict())
    assert all(v.dtype == torch.float16 for v in sd.values())
    for key, shape in [(IMG + "local_encoder.proj.weight", (32, 1, 16, 16)), (IMG + "extra_tokens", (1, 1, 32)),
                       (IMG + "fixed_positional_encoder.positions", (1, 6144, 32)),
                       (IMG + "context_encoder.norm.weight", (32,)), ("model.blocks.1.attn.qkv.weight", (96, 32)),
                       ("model.blocks.1.attn.proj.bias", (32,)), ("model.blocks.0.mlp.fc1.weight", (128, 32)),
                       ("model.blocks.0.norm2.bias", (32,)), ("fc_norm.weight", (32,)), ("head.weight", (12, 32))]:
        assert tuple(sd[key].shape) == shape, key
    assert ckpt["cfg"]["model"]["pretrained_model_args"]["model"]["num_heads"] == 2
    assert SSLAMConfig.from_state_dict(sd, num_heads=2) == SMALL
    assert teacher.config == SMALL and teacher.label_ids is None and teacher.num_classes == 12


def test_fp16_weights_are_part_of_the_model(small, waves):
    model, _, teacher = small
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for t in list(rounded.parameters()) + list(rounded.buffers()):
            t.copy_(t.half().float())
    assert all(p.dtype == torch.float32 for p in teacher.model.parameters())
    with torch.no_grad():
        feats = teacher.front_end(waves)
        got, want, unrounded = teacher.model(feats), rounded(feats), model(feats)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # the fp32 original differs by far more than that: loading did not skip the rounding
    assert (got - unrounded).abs().max() > 1e-4


def test_round_trip_both_formats(small, waves, tmp_path):
    _, path, teacher = small
    folder = tmp_path / "hf"
    save_sslam_safetensors(teacher, folder)
    hf_keys = set(load_file(str(folder / "model.safetensors")))
    assert {"model.local_encoder.proj.weight", "model.extra_tokens", "model.fixed_positional_encoder.positions",
            "model.pre_norm.weight", "model.blocks.1.attn.qkv.bias", "model.fc_norm.bias",
            "model.head.weight"} <= hf_keys
    assert not any(k.startswith(("model.modality_encoders", "head.", "fc_norm.")) for k in hf_keys)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "eat" and config["num_heads"] == 2 and config["max_length"] == 768
    bare = save_sslam_safetensors(teacher, tmp_path / "bare.safetensors", dtype=torch.float16)
    again = save_sslam_checkpoint(SSLAMTeacher.from_checkpoint(folder), tmp_path / "again.pt")
    want = teacher.logits(waves)
    for source in (folder, bare, again):
        loaded = SSLAMTeacher.from_checkpoint(source, name="copy")
        assert torch.equal(loaded.logits(waves), want), source
    # a real HF folder: config.json only (no metadata in the header), positions dropped
    plain = tmp_path / "plain"
    plain.mkdir()
    weights = {k: v for k, v in load_file(str(folder / "model.safetensors")).items()
               if k != "model.fixed_positional_encoder.positions"}
    save_file(weights, str(plain / "model.safetensors"))
    (plain / "config.json").write_text(json.dumps(config))
    rebuilt = SSLAMTeacher.from_checkpoint(plain).logits(waves)
    torch.testing.assert_close(rebuilt, want, rtol=0, atol=5e-3)  # fp32 table instead of the fp16-rounded one


def test_identity_records_weights_and_front_end(small):
    _, path, teacher = small
    ident = teacher.identity()
    assert ident["kind"] == "sslam" and ident["checkpoint"] == str(path.resolve())
    assert ident["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    fe = ident["front_end"]
    assert (fe["type"], fe["mean"], fe["std"], fe["target_length"], fe["num_mel_bins"]) == \
        ("kaldi_fbank", -4.268, 4.569, 1024, 128)
    assert teacher.window_samples == (1024 - 1) * 160 + 400
    assert ident["clips"]["window_seconds"] == teacher.window_samples / SR
    assert "1024 frames" in ident["clips"]["short"]
    assert ident["labels"].startswith("positional")


def test_long_clip_is_the_mean_of_its_windows(small):
    _, _, teacher = small
    clip = torch.from_numpy((0.1 * np.random.default_rng(2).standard_normal(23 * SR)).astype(np.float32))
    window = teacher.window_samples
    starts = ClipPolicy().starts(clip.numel(), window, SR)
    assert starts == [0, 80000, 160000, 23 * SR - window]
    per_window = teacher.window_logits([clip[s:s + window] for s in starts])
    assert (per_window[0] - per_window[-1]).abs().max() > 1e-3  # windows do differ
    torch.testing.assert_close(teacher.logits([clip]), per_window.mean(0, keepdim=True), rtol=1e-5, atol=1e-5)


def test_batches_do_not_mix_clips(small, waves):
    _, _, teacher = small
    both = teacher.window_logits(waves)
    torch.testing.assert_close(teacher.window_logits(waves[1:]), both[1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(teacher.window_logits(waves[:1]), both[:1], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- checkpoint errors


def _edited(path, tmp_path, edit, name="edited.pt"):
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt)
    out = tmp_path / name
    torch.save(ckpt, out)
    return out


def test_missing_truncated_and_garbage_files(small, tmp_path):
    _, path, teacher = small
    with pytest.raises(CheckpointError, match="not found"):
        SSLAMTeacher.from_checkpoint(tmp_path / "nope.pt")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
        SSLAMTeacher.from_checkpoint(trunc)
    bare = save_sslam_safetensors(teacher, tmp_path / "w.safetensors")
    bare.write_bytes(bare.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        SSLAMTeacher.from_checkpoint(bare)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="needs model.safetensors"):
        SSLAMTeacher.from_checkpoint(tmp_path / "empty")
    junk = tmp_path / "junk.pt"
    torch.save({"model": {"a": 1}}, junk)
    with pytest.raises(CheckpointError, match="holds no state dict of tensors"):
        SSLAMTeacher.from_checkpoint(junk)


def test_missing_unexpected_and_misshapen_weights(small, tmp_path):
    _, path, teacher = small
    for key in ("model.blocks.1.mlp.fc2.bias", "head.weight"):
        bad = _edited(path, tmp_path, lambda c: c["model"].pop(key))
        with pytest.raises(CheckpointError, match=rf"sslam teacher: .*lacks weight '{key}'"):
            SSLAMTeacher.from_checkpoint(bad)
    bad = _edited(path, tmp_path, lambda c: c["model"].update({"model.blocks.0.attn.q_bias": torch.zeros(32)}))
    with pytest.raises(CheckpointError, match=r"unexpected weight 'model\.blocks\.0\.attn\.q_bias'"):
        SSLAMTeacher.from_checkpoint(bad)
    bad = _edited(path, tmp_path, lambda c: c["model"].update({"model.blocks.1.attn.proj.weight": torch.zeros(32, 16)}))
    with pytest.raises(CheckpointError, match=r"'model\.blocks\.1\.attn\.proj\.weight' has shape \(32, 16\)"):
        SSLAMTeacher.from_checkpoint(bad)
    # the Hugging Face layout names its own keys
    folder = tmp_path / "hf"
    save_sslam_safetensors(teacher, folder)
    weights = load_file(str(folder / "model.safetensors"))
    del weights["model.pre_norm.bias"]
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"lacks weight 'model\.pre_norm\.bias'"):
        SSLAMTeacher.from_checkpoint(folder)


def test_other_kinds_and_pretraining_checkpoints(small, tmp_path):
    _, path, teacher = small
    htsat = tmp_path / "htsat.ckpt"
    torch.save({"state_dict": {"sed_model.patch_embed.proj.weight": torch.zeros(96, 1, 4, 4),
                               "sed_model.tscam_conv.weight": torch.zeros(527, 768, 2, 3)}}, htsat)
    with pytest.raises(CheckpointError, match="looks like a htsat checkpoint"):
        SSLAMTeacher.from_checkpoint(htsat)

    def as_pretraining(c):  # the bare data2vec_multi state: no 'model.' prefix, EMA teacher, CNN decoder
        c["model"] = {k[len("model."):]: v for k, v in c["model"].items() if k.startswith("model.")}
        c["model"]["_ema"] = {"blocks.0.norm1.weight": torch.ones(32)}
        c["model"]["modality_encoders.IMAGE.decoder.proj.weight"] = torch.zeros(32, 32)

    pre = _edited(path, tmp_path, as_pretraining, "pretrain.pt")
    with pytest.raises(CheckpointError, match="pre-training checkpoint, not a fine-tuned classifier"):
        SSLAMTeacher.from_checkpoint(pre)
    hf = tmp_path / "hf_pretrain.safetensors"
    save_file({k: v for k, v in load_file(str(save_sslam_safetensors(teacher, tmp_path / "w.safetensors"))).items()
               if not k.startswith(("model.head.", "model.fc_norm."))}, str(hf))
    with pytest.raises(CheckpointError, match="pre-training checkpoint, not a fine-tuned classifier"):
        SSLAMTeacher.from_checkpoint(hf)


def test_cfg_handling(small, waves, tmp_path):
    _, path, teacher = small
    # a cfg stored as a Python object needs explicit trust
    namespaced = _edited(path, tmp_path, lambda c: c.update(cfg=argparse.Namespace(**fairseq_cfg(SMALL))), "ns.pt")
    with pytest.raises(CheckpointError, match="allow_pickle"):
        SSLAMTeacher.from_checkpoint(namespaced)
    trusted = SSLAMTeacher.from_checkpoint(namespaced, allow_pickle=True)
    assert torch.equal(trusted.logits(waves), teacher.logits(waves))
    # without a cfg a 32-wide model's head count is unknown (released 768-wide: 12 heads)
    no_cfg = _edited(path, tmp_path, lambda c: c.pop("cfg"), "nocfg.pt")
    with pytest.raises(CheckpointError, match="number of attention heads"):
        SSLAMTeacher.from_checkpoint(no_cfg)

    def mean_pooled(c):
        c["cfg"]["model"]["prediction_mode"] = "MEAN_POOLING"

    with pytest.raises(CheckpointError, match="MEAN_POOLING .*does not implement"):
        SSLAMTeacher.from_checkpoint(_edited(path, tmp_path, mean_pooled, "mean.pt"))
