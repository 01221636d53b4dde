import json

import numpy as np
import pytest
import torch

from teacher_checkpoints import original_ast_state_dict

from dass_distill.teachers import ASTTeacher, CheckpointError, KaldiFbank, ast_config, load_teacher, save_ast_folder


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    torch.manual_seed(0)
    config = ast_config("ast_tiny", 4, target_length=200, label_ids=["/m/a", "/m/b", "/m/c", "/m/d"],
                        label_names=["A", "B", "C", "D"])
    teacher = ASTTeacher.from_config(config)
    folder = tmp_path_factory.mktemp("ast")
    save_ast_folder(teacher.model, folder)
    return teacher, folder


def test_front_end_matches_transformers_feature_extractor():
    """Our AST front end against transformers' ASTFeatureExtractor (a separate implementation)."""
    from transformers import ASTFeatureExtractor

    rng = np.random.default_rng(0)
    wave = (rng.standard_normal(16000 * 2) * 0.1).astype(np.float32)
    ours = KaldiFbank(target_length=300)(torch.from_numpy(wave)[None])[0]
    hf = ASTFeatureExtractor(max_length=300)(wave, sampling_rate=16000, return_tensors="pt")["input_values"][0]
    torch.testing.assert_close(ours, hf, rtol=0, atol=2e-4)


def test_front_end_pads_short_and_cuts_long():
    fe = KaldiFbank(target_length=100)
    out = fe([torch.randn(8000) * 0.1, torch.randn(40000) * 0.1])
    assert out.shape == (2, 100, 128)
    # 0.5 s -> 48 frames; the rest is the normalised zero padding
    torch.testing.assert_close(out[0, 48:], torch.full((52, 128), -fe.mean / (2 * fe.std)))


def test_folder_round_trip_gives_same_logits(teacher_folder):
    teacher, folder = teacher_folder
    loaded = load_teacher(f"ast:{folder}")
    waves = [torch.randn(16000) * 0.1, torch.randn(24000) * 0.1]
    torch.testing.assert_close(loaded.logits(waves), teacher.logits(waves))
    assert loaded.label_ids == ["/m/a", "/m/b", "/m/c", "/m/d"] and loaded.label_names[2] == "C"
    ident = loaded.identity()
    assert ident["kind"] == "ast" and len(ident["checkpoint_sha256"]) == 64
    assert ident["front_end"]["target_length"] == 200 and ident["front_end"]["num_mel_bins"] == 128
    # batches of different composition give the same per-clip logits (no cross-clip padding)
    torch.testing.assert_close(loaded.logits(waves[1:]), loaded.logits(waves)[1:], rtol=1e-5, atol=1e-6)


def test_teacher_yaml_spec(teacher_folder, tmp_path):
    _, folder = teacher_folder
    (tmp_path / "t.yaml").write_text(f"kind: ast\npath: {folder}\nname: my_ast\n")
    assert load_teacher(str(tmp_path / "t.yaml")).name == "my_ast"


def test_checkpoint_errors(teacher_folder, tmp_path):
    _, folder = teacher_folder
    with pytest.raises(CheckpointError, match="not found"):
        load_teacher(f"ast:{tmp_path / 'missing'}")
    with pytest.raises(CheckpointError, match="KIND:PATH"):
        load_teacher("just-a-path")
    with pytest.raises(CheckpointError, match="unknown teacher kind 'htsat2'"):
        load_teacher(f"htsat2:{folder}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="needs config.json and model.safetensors"):
        load_teacher(f"ast:{tmp_path / 'empty'}")
    # weights that do not fit the config: name the first offending key
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_size"], cfg["intermediate_size"] = 48, 96
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="AST teacher"):
        load_teacher(f"ast:{bad}")
    # truncated weights
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    (trunc / "config.json").write_text((folder / "config.json").read_text())
    (trunc / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot load weights"):
        load_teacher(f"ast:{trunc}")


# ------------------------------------------------------------------ original .pth release format
def reference_ast_logits(sd, fbank, fstride, tstride, heads):
    """The original AST forward written out from its state dict: timm DeiT blocks (LN eps 1e-6,
    fused qkv), (cls + dist) / 2, mlp_head with torch's default LN eps 1e-5."""
    import torch.nn.functional as F

    p = {k.removeprefix("module."): v.double() for k, v in sd.items()}
    x = fbank.double().unsqueeze(1).transpose(2, 3)  # (B, 1, F, T)
    x = F.conv2d(x, p["v.patch_embed.proj.weight"], p["v.patch_embed.proj.bias"], stride=(fstride, tstride))
    x = x.flatten(2).transpose(1, 2)
    b, _, d = x.shape
    x = torch.cat([p["v.cls_token"].expand(b, -1, -1), p["v.dist_token"].expand(b, -1, -1), x], 1) + p["v.pos_embed"]
    depth = 1 + max(int(k.split(".")[2]) for k in p if k.startswith("v.blocks."))
    for i in range(depth):
        q = {k.removeprefix(f"v.blocks.{i}."): v for k, v in p.items() if k.startswith(f"v.blocks.{i}.")}
        h = F.layer_norm(x, (d,), q["norm1.weight"], q["norm1.bias"], eps=1e-6)
        qkv = (h @ q["attn.qkv.weight"].T + q["attn.qkv.bias"]).reshape(b, -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(qkv[0] @ qkv[1].transpose(-1, -2) / (d // heads) ** 0.5, -1) @ qkv[2]
        x = x + att.transpose(1, 2).reshape(b, -1, d) @ q["attn.proj.weight"].T + q["attn.proj.bias"]
        h = F.layer_norm(x, (d,), q["norm2.weight"], q["norm2.bias"], eps=1e-6)
        h = F.gelu(h @ q["mlp.fc1.weight"].T + q["mlp.fc1.bias"])
        x = x + h @ q["mlp.fc2.weight"].T + q["mlp.fc2.bias"]
    x = F.layer_norm(x, (d,), p["v.norm.weight"], p["v.norm.bias"], eps=1e-6)
    x = (x[:, 0] + x[:, 1]) / 2
    x = F.layer_norm(x, (d,), p["mlp_head.0.weight"], p["mlp_head.0.bias"], eps=1e-5)
    return x @ p["mlp_head.1.weight"].T + p["mlp_head.1.bias"]


@pytest.mark.parametrize("stride", [10, 16])
def test_original_pth_matches_reference_forward(tmp_path, stride):
    sd = original_ast_state_dict(fstride=stride, tstride=stride, seed=stride)
    path = tmp_path / "audioset_ast.pth"
    torch.save(sd, path)
    teacher = load_teacher(f"ast:{path}")
    cfg = teacher.model.config
    assert (cfg.frequency_stride, cfg.time_stride, cfg.num_attention_heads, cfg.num_hidden_layers) == (stride, stride, 2, 2)
    assert teacher.label_ids is None and teacher.num_classes == 5  # released files carry no label names
    torch.manual_seed(1)
    waves = [torch.randn(16000 * 3) * 0.1, torch.randn(16000 * 8) * 0.1]
    feats = KaldiFbank()(waves)
    ref = reference_ast_logits(sd, feats, stride, stride, heads=2).float()
    ours = teacher.logits(waves)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert ours.std() > 0.1  # a non-trivial model: the check above compares real signal
    ident = teacher.identity()
    assert ident["checkpoint_sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert ident["clips"]["long"] == "windows" and "zero-padded to 1024 frames" in ident["clips"]["short"]


def test_original_pth_long_clip_policy(tmp_path):
    sd = original_ast_state_dict(fstride=16, tstride=16, seed=3)
    torch.save(sd, tmp_path / "a.pth")
    teacher = load_teacher(f"ast:{tmp_path / 'a.pth'}")
    win = teacher.window_samples
    assert KaldiFbank().one(torch.randn(win)).shape[0] == 1024 and win == 1023 * 160 + 400
    torch.manual_seed(2)
    wave = torch.randn(win + 16000 * 7) * 0.1  # 17.24 s: windows at 0, 5 s, and one ending at the end
    starts = [0, 80000, wave.numel() - win]
    expected = teacher.window_logits([wave[s:s + win] for s in starts]).mean(0)
    torch.testing.assert_close(teacher.logits([wave])[0], expected, rtol=1e-5, atol=1e-5)
    from dass_distill.teachers import ClipPolicy

    teacher.set_clip_policy(ClipPolicy(long="truncate"))
    torch.testing.assert_close(teacher.logits([wave])[0], teacher.window_logits([wave[:win]])[0])
    assert teacher.identity()["clips"]["long"] == "truncate"


def test_original_pth_errors(tmp_path):
    sd = original_ast_state_dict(depth=1, seed=4)
    good = tmp_path / "good.pth"
    torch.save(sd, good)

    def save(name, d):
        torch.save(d, tmp_path / name)
        return f"ast:{tmp_path / name}"

    with pytest.raises(CheckpointError, match=r"lacks weight 'module.v.blocks.0.norm2.bias'"):
        load_teacher(save("missing.pth", {k: v for k, v in sd.items() if k != "module.v.blocks.0.norm2.bias"}))
    with pytest.raises(CheckpointError, match=r"unexpected weight 'module.v.extra'"):
        load_teacher(save("extra.pth", {**sd, "module.v.extra": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"'module.v.blocks.0.mlp.fc2.weight' has shape \(128, 100\)"):
        load_teacher(save("shape.pth", {**sd, "module.v.blocks.0.mlp.fc2.weight": torch.zeros(128, 100)}))
    with pytest.raises(CheckpointError, match=r"1000 patch positions.*input_tdim"):
        load_teacher(save("pos.pth", {**sd, "module.v.pos_embed": torch.zeros(1, 1002, 128)}))
    with pytest.raises(CheckpointError, match="looks like a htsat checkpoint"):
        load_teacher(save("htsat.pth", {"state_dict": {"sed_model.tscam_conv.weight": torch.zeros(3)}}))
    (tmp_path / "trunc.pth").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
        load_teacher(f"ast:{tmp_path / 'trunc.pth'}")
    with pytest.raises(CheckpointError, match="allow_pickle"):
        load_teacher(save("pickled.pth", {"model": sd, "args": __import__("argparse").Namespace(lr=1)}))
    # the same file loads when the user vouches for it
    (tmp_path / "t.yaml").write_text("kind: ast\npath: pickled.pth\nallow_pickle: true\n")
    assert load_teacher(str(tmp_path / "t.yaml")).num_classes == 5
    (tmp_path / "u.yaml").write_text("kind: ast\npath: good.pth\nwindow: 3\n")
    with pytest.raises(CheckpointError, match="unknown key 'window'"):
        load_teacher(str(tmp_path / "u.yaml"))
