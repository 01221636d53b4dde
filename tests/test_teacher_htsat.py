"""HTS-AT teacher: front end, model and checkpoint loading against independent references.

The references below are written from the paper / original code's description, in float64,
with explicit loops (windows, chunks), and share no code with ``teachers/htsat.py``.
"""

import hashlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dass_distill.teachers import CheckpointError, ClipPolicy
from dass_distill.teachers.htsat import (FRONT_END_MATRICES, HTSATConfig, HTSATModel, HTSATTeacher, mel_matrix,
                                         save_htsat_checkpoint, stft_matrices)

SMALL = HTSATConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=8, num_classes=12)
F64 = torch.float64


# ---------------------------------------------------------------- helpers

def randomise(model: HTSATModel, seed: int) -> HTSATModel:
    """Random, non-trivial weights everywhere but the (fixed) STFT/mel matrices, BatchNorm stats included."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in FRONT_END_MATRICES:
                continue
            if name.endswith("relative_position_bias_table"):
                p.copy_(randn(*p.shape) * 0.5)
            elif p.dim() >= 2:
                p.copy_(randn(*p.shape) / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):              # LayerNorm / BatchNorm scales
                p.copy_(1 + 0.3 * randn(*p.shape))
            else:
                p.copy_(0.1 * randn(*p.shape))
        model.bn0.running_mean.copy_(-20 + 5 * randn(model.config.mel_bins))
        model.bn0.running_var.copy_(60 + 40 * torch.rand(model.config.mel_bins, generator=g))
    return model


def noise(seconds: float, seed: int, sr: int = 32000) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sr)) / sr
    # a chirp plus noise, so frequency and time structure both reach the model
    return 0.1 * torch.randn(len(t), generator=g) + 0.2 * torch.sin(2 * math.pi * (300 + 400 * t) * t)


def librosa_mel(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """librosa.filters.mel defaults (htk=False, norm='slaney'), re-derived in numpy: (n_fft//2+1, n_mels)."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0

    def hz_to_mel(f):
        return f / f_sp if f < min_log_hz else min_log_mel + math.log(f / min_log_hz) / logstep

    def mel_to_hz(m):
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fft_f = np.linspace(0, sr / 2, n_fft // 2 + 1)
    weights = np.zeros((n_mels, len(fft_f)))
    for i in range(n_mels):
        lower = (fft_f - mel_f[i]) / (mel_f[i + 1] - mel_f[i])
        upper = (mel_f[i + 2] - fft_f) / (mel_f[i + 2] - mel_f[i + 1])
        weights[i] = np.maximum(0, np.minimum(lower, upper)) * 2.0 / (mel_f[i + 2] - mel_f[i])
    return weights.T


def torchlibrosa_stft_weights(n_fft: int) -> tuple[torch.Tensor, torch.Tensor]:
    """As torchlibrosa builds them: omega**(x*y) DFT matrix times a periodic Hann window."""
    x, y = np.meshgrid(np.arange(n_fft), np.arange(n_fft))
    w = np.power(np.exp(-2j * np.pi / n_fft), x * y)[:, : n_fft // 2 + 1]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    real = torch.tensor(np.real(w * window[:, None]).T, dtype=torch.float32)[:, None, :]
    imag = torch.tensor(np.imag(w * window[:, None]).T, dtype=torch.float32)[:, None, :]
    return real, imag


def ref_logmel(sd: dict, cfg: HTSATConfig, waves: torch.Tensor) -> torch.Tensor:
    """torch.stft power -> mel -> dB -> BatchNorm, float64: (B, frames, mels)."""
    win = torch.hann_window(cfg.n_fft, periodic=True, dtype=F64)
    spec = torch.stft(waves.double(), cfg.n_fft, cfg.hop, window=win, center=True, pad_mode="reflect",
                      return_complex=True).abs() ** 2                                   # (B, freq, T)
    mel = spec.transpose(1, 2) @ sd["logmel_extractor.melW"].double()
    db = 10 * torch.log10(mel.clamp(min=1e-10))
    rm, rv = sd["bn0.running_mean"].double(), sd["bn0.running_var"].double()
    return (db - rm) / torch.sqrt(rv + 1e-5) * sd["bn0.weight"].double() + sd["bn0.bias"].double()


def cubic_stretch(n_in: int, n_out: int, a: float = -0.75) -> torch.Tensor:
    """(n_out, n_in) bicubic (Keys, a=-0.75) resampling matrix, align_corners=True, edges clamped.

    The source position is computed in float32 as PyTorch's CPU kernel does for float input,
    so the reference uses the same sample positions as the model.
    """
    scale = np.float32((n_in - 1) / (n_out - 1))
    m = torch.zeros(n_out, n_in, dtype=F64)
    for i in range(n_out):
        src = float(scale * np.float32(i))
        x0 = math.floor(src)
        t = src - x0
        for off in (-1, 0, 1, 2):
            d = abs(off - t)
            w = ((a + 2) * d - (a + 3)) * d * d + 1 if d <= 1 else ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
            m[i, min(max(x0 + off, 0), n_in - 1)] += w
    return m


def ln(x, sd, prefix):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], 1e-5)


def lin(x, sd, prefix):
    bias = sd.get(prefix + ".bias")
    return x @ sd[prefix + ".weight"].T + (0 if bias is None else bias)


def ref_block(x, sd, pre, heads, ws, shift):
    """One Swin block on (B, H, W, C), window by window, with an explicit region mask."""
    B, H, W, C = x.shape
    n, d = ws * ws, C // heads
    h = ln(x, sd, pre + "norm1")
    if shift:
        h = torch.roll(h, (-shift, -shift), (1, 2))
    ys, xs = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    table = sd[pre + "attn.relative_position_bias_table"]
    bias = table[(ys[:, None] - ys[None, :] + ws - 1) * (2 * ws - 1) + (xs[:, None] - xs[None, :] + ws - 1)]
    bias = bias.permute(2, 0, 1)                                                  # (heads, n, n)

    def region(pos, size):   # which of the three strips a (rolled) position belongs to
        return 0 if pos < size - ws else (1 if pos < size - shift else 2)

    out = torch.zeros_like(h)
    for r0 in range(0, H, ws):
        for c0 in range(0, W, ws):
            tok = h[:, r0:r0 + ws, c0:c0 + ws].reshape(B, n, C)
            qkv = lin(tok, sd, pre + "attn.qkv")
            q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B, n, heads, d).transpose(1, 2) for i in range(3))
            score = q @ k.transpose(-1, -2) / math.sqrt(d) + bias
            if shift:
                lab = torch.tensor([region(r0 + y, H) * 3 + region(c0 + z, W) for y in range(ws) for z in range(ws)])
                score = score.masked_fill(lab[:, None] != lab[None, :], float("-inf"))
            o = (score.softmax(-1) @ v).transpose(1, 2).reshape(B, n, C)
            out[:, r0:r0 + ws, c0:c0 + ws] = lin(o, sd, pre + "attn.proj").reshape(B, ws, ws, C)
    if shift:
        out = torch.roll(out, (shift, shift), (1, 2))
    x = x + out
    y = lin(F.gelu(lin(ln(x, sd, pre + "norm2"), sd, pre + "mlp.fc1")), sd, pre + "mlp.fc2")
    return x + y


def ref_merge(x, sd, pre):
    cat = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    return lin(ln(cat, sd, pre + "norm"), sd, pre + "reduction")


def ref_logits(sd: dict, cfg: HTSATConfig, waves: torch.Tensor) -> torch.Tensor:
    """The whole model, float64, from the saved state dict (keys without 'sed_model.')."""
    sd = {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}
    feats = ref_logmel(sd, cfg, waves)                                             # (B, 1001, 64)
    feats = cubic_stretch(feats.shape[1], cfg.spec_size * cfg.freq_ratio) @ feats  # (B, 1024, 64)
    chunk = cfg.spec_size
    # four consecutive 256-frame chunks, each (mel, time), stacked along the image rows
    img = torch.cat([feats[:, c * chunk:(c + 1) * chunk].transpose(1, 2) for c in range(cfg.freq_ratio)], 1)
    x = F.conv2d(img[:, None], sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=cfg.patch_stride)
    x = ln(x.permute(0, 2, 3, 1), sd, "patch_embed.norm")                          # (B, H, W, C)
    for i, depth in enumerate(cfg.depths):
        ws = min(cfg.window_size, x.shape[1])
        for j in range(depth):
            shift = ws // 2 if (j % 2 and x.shape[1] > cfg.window_size) else 0
            x = ref_block(x, sd, f"layers.{i}.blocks.{j}.", cfg.num_heads[i], ws, shift)
        if i < len(cfg.depths) - 1:
            x = ref_merge(x, sd, f"layers.{i}.downsample.")
    x = ln(x, sd, "norm")                                                          # (B, 8, 8, C)
    rows = x.shape[1] // cfg.freq_ratio
    # rows of the token grid come in freq_ratio groups, one per time chunk: lay them side by side
    grid = torch.cat([x[:, c * rows:(c + 1) * rows] for c in range(cfg.freq_ratio)], 2)    # (B, 2, 32, C)
    frames = F.conv2d(grid.permute(0, 3, 1, 2), sd["tscam_conv.weight"], sd["tscam_conv.bias"], padding=(0, 1))
    return frames.flatten(2).mean(-1)


class Opaque:
    """Stands for the Python objects some checkpoints pickle (configs, callbacks)."""

    def __init__(self) -> None:
        self.lr = 1e-3


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = randomise(HTSATModel(SMALL), seed=1)
    path = save_htsat_checkpoint(model, tmp_path_factory.mktemp("htsat") / "HTSAT_small.ckpt")
    return model, path


@pytest.fixture(scope="module")
def teacher(saved):
    return HTSATTeacher.from_checkpoint(saved[1])


def state_of(path):
    return {k[len("sed_model."):]: v for k, v in torch.load(path, weights_only=True)["state_dict"].items()}


# ---------------------------------------------------------------- front end

def test_computed_matrices_equal_torchlibrosa_and_librosa():
    real, imag = stft_matrices(1024)
    ref_real, ref_imag = torchlibrosa_stft_weights(1024)
    assert real.shape == (513, 1, 1024)
    torch.testing.assert_close(real, ref_real, rtol=0, atol=2e-6)
    torch.testing.assert_close(imag, ref_imag, rtol=0, atol=2e-6)
    mel = mel_matrix(HTSATConfig())
    ref = torch.tensor(librosa_mel(32000, 1024, 64, 50.0, 14000.0), dtype=torch.float32)
    assert mel.shape == (513, 64)
    torch.testing.assert_close(mel, ref, rtol=1e-4, atol=1e-7)


def test_front_end_matches_torch_stft_reference():
    model = randomise(HTSATModel(SMALL), seed=5)
    real, imag = torchlibrosa_stft_weights(SMALL.n_fft)
    with torch.no_grad():
        model.spectrogram_extractor.stft.conv_real.weight.copy_(real)
        model.spectrogram_extractor.stft.conv_imag.weight.copy_(imag)
        model.logmel_extractor.melW.copy_(torch.tensor(librosa_mel(32000, 1024, 64, 50.0, 14000.0)))
    waves = torch.stack([noise(10, 0), F.pad(noise(4, 1), (0, 6 * 32000))])
    ours = model.logmel(waves)
    assert ours.shape == (2, 1, 1001, 64) and ours.dtype == torch.float32
    ref = ref_logmel(model.state_dict(), SMALL, waves)
    torch.testing.assert_close(ours[:, 0].double(), ref, rtol=1e-4, atol=2e-4)
    # the zero padding reaches the -100 dB floor (amin 1e-10, no top_db)
    floor = (-100 - model.bn0.running_mean) / torch.sqrt(model.bn0.running_var + 1e-5) * model.bn0.weight + model.bn0.bias
    torch.testing.assert_close(ours[1, 0, -50:], floor.detach().expand(50, -1))


def test_front_end_ignores_train_mode():
    model = randomise(HTSATModel(SMALL), seed=6)
    stats = model.bn0.running_mean.clone()
    wave = noise(10, 2)[None]
    eval_out = model.eval().logmel(wave)
    train_out = model.train().logmel(wave)
    torch.testing.assert_close(train_out, eval_out, rtol=0, atol=0)
    assert torch.equal(model.bn0.running_mean, stats)


def test_wav2img_folds_four_chunks():
    model = HTSATModel(SMALL)
    t = torch.arange(1024, dtype=torch.float32)[:, None] * 1000 + torch.arange(64)[None, :]   # value = 1000*frame + mel
    img = model.to_image(t[None, None])
    assert img.shape == (1, 1, 256, 256)
    # row = chunk * 64 + mel, column = frame within the chunk
    assert img[0, 0, 64 * 2 + 5, 7].item() == 1000 * (2 * 256 + 7) + 5
    assert img[0, 0, 63, 255].item() == 1000 * 255 + 63
    # 1001 frames are stretched end to end (align_corners): first and last frames kept exactly
    feats = torch.randn(1, 1, 1001, 64, generator=torch.Generator().manual_seed(0))
    out = model.to_image(feats)
    torch.testing.assert_close(out[0, 0, :64, 0], feats[0, 0, 0])
    torch.testing.assert_close(out[0, 0, 192:, 255], feats[0, 0, -1])
    # and in between as Keys' bicubic (a = -0.75) does, mel bins untouched
    stretched = cubic_stretch(1001, 1024) @ feats[0, 0].double()
    ref = torch.cat([stretched[c * 256:(c + 1) * 256].T for c in range(4)], 0)
    torch.testing.assert_close(out[0, 0].double(), ref, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- model

def test_logits_match_independent_reference(saved, teacher):
    model, path = saved
    waves = [noise(10, 3), noise(4, 4)]
    ours = teacher.window_logits(waves)
    padded = torch.stack([waves[0], F.pad(waves[1], (0, 6 * 32000))])
    ref = ref_logits(state_of(path), SMALL, padded)
    assert ours.shape == (2, 12) and ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    # non-trivial: classes and clips differ
    assert ref.std(1).min() > 0.1 and (ref[0] - ref[1]).abs().max() > 0.1


def test_config_inferred_from_shapes(saved):
    assert HTSATConfig.from_state_dict(state_of(saved[1])) == SMALL
    released = HTSATModel(HTSATConfig())
    sd = released.state_dict()
    assert HTSATConfig.from_state_dict(sd) == HTSATConfig()
    # the released layout (model/htsat.py with torchlibrosa front end, tscam on, ape off)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["spectrogram_extractor.stft.conv_real.weight"] == (513, 1, 1024)
    assert shapes["logmel_extractor.melW"] == (513, 64)
    assert shapes["patch_embed.proj.weight"] == (96, 1, 4, 4)
    assert shapes["layers.2.blocks.5.attn.relative_position_bias_table"] == (225, 16)
    assert shapes["layers.0.blocks.1.attn_mask"] == (64, 64, 64)
    assert shapes["layers.2.downsample.reduction.weight"] == (768, 1536)
    assert shapes["tscam_conv.weight"] == (527, 768, 2, 3) and shapes["head.weight"] == (527, 527)
    masks = sorted(k for k in sd if k.endswith("attn_mask"))
    assert masks == [f"layers.{i}.blocks.{j}.attn_mask" for i, j in ((0, 1), (1, 1), (2, 1), (2, 3), (2, 5))]
    assert "absolute_pos_embed" not in sd and "layers.3.downsample.norm.weight" not in sd
    assert len(sd) == 200


def test_round_trip_and_identity(saved, teacher):
    model, path = saved
    raw = torch.load(path, weights_only=True)
    assert raw["pytorch-lightning_version"] == "1.5.9" and all(k.startswith("sed_model.") for k in raw["state_dict"])
    waves = [noise(10, 7), noise(2.5, 8)]
    again = HTSATTeacher.from_checkpoint(path)
    assert torch.equal(again.window_logits(waves), teacher.window_logits(waves))
    fresh = HTSATTeacher(model)
    torch.testing.assert_close(fresh.window_logits(waves), teacher.window_logits(waves), rtol=0, atol=0)
    ident = teacher.identity()
    assert ident["kind"] == "htsat" and ident["num_classes"] == 12 and teacher.label_ids is None
    assert ident["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    fe = ident["front_end"]
    assert fe["matrices"] == "checkpoint" and fe["sample_rate"] == 32000 and fe["hop_length"] == 320
    assert fe["fmin"] == 50 and fe["fmax"] == 14000 and fe["mel_bins"] == 64
    assert ident["clips"]["window_seconds"] == 10 and "zero-padded" in ident["clips"]["short"]


def test_short_clip_is_zero_padded(teacher):
    wave = noise(4, 9)
    torch.testing.assert_close(teacher.logits([wave]), teacher.window_logits([F.pad(wave, (0, 6 * 32000))]),
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match="exceeds"):
        teacher.window_logits([noise(10.5, 0)])


def test_long_clip_uses_window_mean(teacher):
    assert teacher.clip_policy == ClipPolicy()
    wave = noise(23, 10)
    starts = [0, 5 * 32000, 10 * 32000, 13 * 32000]         # hop 5 s, last window ending at 23 s
    windows = teacher.window_logits([wave[s:s + 320000] for s in starts])
    torch.testing.assert_close(teacher.logits([wave, noise(3, 11)])[0], windows.mean(0), rtol=1e-5, atol=1e-5)


def test_batch_composition_does_not_change_logits(teacher):
    waves = [noise(10, 12), noise(6, 13), noise(1, 14)]
    torch.testing.assert_close(teacher.logits(waves)[1:], teacher.logits(waves[1:]), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- other layouts

def test_bare_and_module_prefixed_state_dicts(saved, tmp_path, teacher):
    _, path = saved
    sd = state_of(path)
    wave = [noise(10, 15)]
    expected = teacher.window_logits(wave)
    torch.save(sd, tmp_path / "bare.pt")
    torch.save({"state_dict": {"module.sed_model." + k: v for k, v in sd.items()}}, tmp_path / "dp.ckpt")
    for name in ("bare.pt", "dp.ckpt"):
        assert torch.equal(HTSATTeacher.from_checkpoint(tmp_path / name).window_logits(wave), expected)
    # weight averaging in the original (main.py weight_average) stores every tensor as float32
    torch.save({"state_dict": {"sed_model." + k: v.float() for k, v in sd.items()}}, tmp_path / "wa.ckpt")
    assert torch.equal(HTSATTeacher.from_checkpoint(tmp_path / "wa.ckpt").window_logits(wave), expected)
    # no front-end matrices at all: they are computed, and said to be
    torch.save({k: v for k, v in sd.items() if k not in FRONT_END_MATRICES}, tmp_path / "nofe.pt")
    computed = HTSATTeacher.from_checkpoint(tmp_path / "nofe.pt")
    assert computed.front_end_params()["matrices"] == "computed"
    torch.testing.assert_close(computed.window_logits(wave), expected)


# ---------------------------------------------------------------- errors

def _write(tmp_path, name, obj):
    torch.save(obj, tmp_path / name)
    return tmp_path / name


def _edited(path, drop=(), add=None):
    sd = dict(torch.load(path, weights_only=True)["state_dict"])
    for k in drop:
        del sd[k]
    sd.update(add or {})
    return {"state_dict": sd, "epoch": 3}


def test_checkpoint_errors(saved, tmp_path):
    _, path = saved
    with pytest.raises(CheckpointError, match="not found"):
        HTSATTeacher.from_checkpoint(tmp_path / "missing.ckpt")

    data = path.read_bytes()
    (tmp_path / "half.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        HTSATTeacher.from_checkpoint(tmp_path / "half.ckpt")

    bad = _write(tmp_path, "missing_key.ckpt", _edited(path, drop=["sed_model.layers.1.blocks.0.attn.proj.bias"]))
    with pytest.raises(CheckpointError, match=r"htsat teacher: .*missing_key.ckpt lacks weight 'layers.1.blocks.0.attn.proj.bias'"):
        HTSATTeacher.from_checkpoint(bad)

    bad = _write(tmp_path, "no_embed.ckpt", _edited(path, drop=["sed_model.patch_embed.proj.weight"]))
    with pytest.raises(CheckpointError, match="'patch_embed.proj.weight'"):
        HTSATTeacher.from_checkpoint(bad)

    bad = _write(tmp_path, "extra.ckpt", _edited(path, add={"sed_model.extra.weight": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match="unexpected weight 'extra.weight'"):
        HTSATTeacher.from_checkpoint(bad)

    bad = _write(tmp_path, "shape.ckpt", _edited(path, add={"sed_model.head.bias": torch.zeros(5)}))
    with pytest.raises(CheckpointError, match=r"'head.bias' has shape \(5,\), the model needs \(12,\)"):
        HTSATTeacher.from_checkpoint(bad)

    index = state_of(path)["layers.1.blocks.0.attn.relative_position_index"]
    bad = _write(tmp_path, "index.ckpt", _edited(path, add={"sed_model.layers.1.blocks.0.attn.relative_position_index":
                                                             index.flip(0)}))
    with pytest.raises(CheckpointError, match="buffer 'layers.1.blocks.0.attn.relative_position_index' does not match"):
        HTSATTeacher.from_checkpoint(bad)

    ast = {"module.v.pos_embed": torch.zeros(1, 4, 8), "module.v.cls_token": torch.zeros(1, 1, 8),
           "module.mlp_head.1.weight": torch.zeros(3, 8)}
    bad = _write(tmp_path, "ast.pth", ast)
    with pytest.raises(CheckpointError, match="looks like an? ast checkpoint"):
        HTSATTeacher.from_checkpoint(bad)

    other = {"sed_model.logmel_extractor.melW": mel_matrix(HTSATConfig(sample_rate=16000, fmax=8000))}
    bad = _write(tmp_path, "16k.ckpt", _edited(path, add=other))
    with pytest.raises(CheckpointError, match="logmel_extractor.melW' is not the front end"):
        HTSATTeacher.from_checkpoint(bad)


def test_pickled_objects_need_allow_pickle(saved, tmp_path):
    _, path = saved
    bad = _write(tmp_path, "pickled.ckpt", {**_edited(path), "hparams": Opaque()})
    with pytest.raises(CheckpointError, match="allow_pickle"):
        HTSATTeacher.from_checkpoint(bad)
    assert HTSATTeacher.from_checkpoint(bad, allow_pickle=True).num_classes == 12
