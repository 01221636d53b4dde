"""SpecAugment masks on teachers: one SpecMask per waveform, applied to the normalised
features each teacher's model receives, in physical units (10 ms frames, a band in Hz)."""

import math

import pytest
import torch

from teacher_checkpoints import perturb

from dass_distill.teachers import ASTTeacher, KaldiFbank, SpecMask, apply_masks, ast_config
from dass_distill.teachers.htsat import FRONT_END_MATRICES, HTSATConfig, HTSATModel, HTSATTeacher
from dass_distill.teachers.sslam import SSLAMClassifier, SSLAMConfig, SSLAMTeacher

KINDS = ("ast", "sslam", "htsat")


def make_teacher(kind: str):
    """A small random-weight teacher with weights large enough that masks show in the logits."""
    torch.manual_seed(0)
    if kind == "ast":
        teacher = ASTTeacher.from_config(ast_config("ast_tiny", 5, target_length=256))
        perturb(teacher.model, 1)
    elif kind == "sslam":
        teacher = SSLAMTeacher(perturb(SSLAMClassifier(SSLAMConfig(embed_dim=32, depth=1, num_heads=2, num_classes=5,
                                                                   target_length=256)), 2))
    else:
        model = HTSATModel(HTSATConfig(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), num_classes=5))
        perturb(model, 3, skip=tuple(FRONT_END_MATRICES))
        model.bn0.running_mean.copy_(torch.linspace(-30, -10, model.config.mel_bins))
        model.bn0.running_var.copy_(torch.linspace(40, 90, model.config.mel_bins))
        teacher = HTSATTeacher(model)
    return teacher.eval()


@pytest.fixture(scope="module", params=KINDS)
def teacher(request):
    return make_teacher(request.param)


def waves_for(teacher, seconds=(2.5, 1.5)):
    g = torch.Generator().manual_seed(7)
    sr = teacher.sample_rate
    out = []
    for s in seconds:
        t = torch.arange(int(s * sr)) / sr
        out.append(0.1 * torch.randn(len(t), generator=g) + 0.3 * torch.sin(2 * math.pi * (400 + 900 * t) * t))
    return out


def model_inputs(teacher, waves, masks=None) -> torch.Tensor:
    """The (B, T, F) features the model body receives: AST/SSLAM fbank into ``model``, HTS-AT
    log-mel after bn0 into ``to_image`` (before the bicubic stretch)."""
    seen = []
    if teacher.kind == "htsat":
        to_image = teacher.model.to_image
        teacher.model.to_image = lambda feats: seen.append(feats[:, 0].clone()) or to_image(feats)
        try:
            teacher.window_logits(waves, masks=masks)
        finally:
            del teacher.model.to_image
    else:
        handle = teacher.model.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
        try:
            teacher.window_logits(waves, masks=masks)
        finally:
            handle.remove()
    assert len(seen) == 1
    return seen[0]


# ---------------------------------------------------------------- centre frequencies


def test_kaldi_centre_frequencies():
    centres = KaldiFbank().centre_frequencies()
    assert centres.shape == (128,) and centres.dtype == torch.float32
    assert bool((centres.diff() > 0).all()) and 20 < float(centres[0]) and float(centres[-1]) < 8000
    # Kaldi's mel scale, 20 Hz .. Nyquist split into 129 equal mel steps, written out in float64
    mel = lambda f: 1127.0 * math.log(1 + f / 700.0)  # noqa: E731
    step = (mel(8000.0) - mel(20.0)) / 129
    expected = torch.tensor([700.0 * (math.exp((mel(20.0) + (i + 1) * step) / 1127.0) - 1) for i in range(128)], dtype=torch.float64)
    torch.testing.assert_close(centres.double(), expected, rtol=1e-6, atol=0)
    # a pure function of the parameters: bit-identical floats on every call
    assert torch.equal(KaldiFbank(target_length=100).centre_frequencies(), centres)


def test_kaldi_centres_are_where_the_fbank_peaks():
    """A tone at centre[k] lands in bin k of the fbank itself (upper bins, wider than an FFT bin)."""
    fe = KaldiFbank(target_length=50)
    centres = fe.centre_frequencies()
    t = torch.arange(16000) / 16000
    for k in (70, 100, 127):
        feats = fe(torch.sin(2 * math.pi * float(centres[k]) * t)[None])[0]
        assert int(feats[10:40].mean(0).argmax()) == k


def test_htsat_centre_frequencies():
    teacher = make_teacher("htsat")
    cfg = teacher.config
    centres = teacher.centre_frequencies()
    assert centres.shape == (cfg.mel_bins,) and bool((centres.diff() > 0).all())
    melW = teacher.model.logmel_extractor.melW.detach()
    bins = torch.round(centres * cfg.n_fft / cfg.sample_rate).long()
    for j in range(cfg.mel_bins):  # each centre is the FFT bin where that filter peaks
        assert melW[bins[j], j] == melW[:, j].max()
    # and within one FFT bin of the Slaney-scale centre (linear below 1 kHz, log above)
    f_sp, logstep = 200.0 / 3, math.log(6.4) / 27.0
    to_mel = lambda f: f / f_sp if f < 1000 else 15.0 + math.log(f / 1000.0) / logstep  # noqa: E731
    to_hz = lambda m: m * f_sp if m < 15.0 else 1000.0 * math.exp(logstep * (m - 15.0))  # noqa: E731
    lo, hi = to_mel(cfg.fmin), to_mel(cfg.fmax)
    slaney = torch.tensor([to_hz(lo + (j + 1) * (hi - lo) / (cfg.mel_bins + 1)) for j in range(cfg.mel_bins)])
    assert float((centres - slaney).abs().max()) <= cfg.sample_rate / cfg.n_fft


# ---------------------------------------------------------------- apply_masks


def test_apply_masks_exact_region():
    feats = torch.randn(3, 50, 10)
    centres = torch.linspace(100.0, 1000.0, 10)
    masks = [SpecMask(time_start=45, time_width=10, freq_low_hz=float(centres[2]), freq_high_hz=float(centres[5])),
             None, SpecMask()]
    out = apply_masks(feats, masks, centres)
    expected = feats.clone()
    expected[0, 45:] = 0.0       # clipped to T
    expected[0, :, 2:6] = 0.0    # both band edges included
    assert torch.equal(out, expected)
    assert not torch.equal(out, feats) and out.data_ptr() != feats.data_ptr()
    # a band between centres selects only the bins inside it; high < low masks nothing
    out = apply_masks(feats, [SpecMask(freq_low_hz=float(centres[3]) + 1, freq_high_hz=float(centres[4]) + 1),
                              SpecMask(freq_low_hz=500.0, freq_high_hz=400.0), None], centres)
    assert (out[0, :, 4] == 0).all() and torch.equal(out[0, :, 3], feats[0, :, 3])
    assert torch.equal(out[1:], feats[1:])
    with pytest.raises(ValueError, match="2 masks for a batch of 3"):
        apply_masks(feats, [None, None], centres)
    with pytest.raises(ValueError, match="start >= 0"):
        SpecMask(time_start=-1, time_width=3)


# ---------------------------------------------------------------- every teacher


def test_no_masks_is_bit_identical(teacher):
    waves = waves_for(teacher)
    plain = teacher.window_logits(waves)
    assert torch.equal(teacher.window_logits(waves, masks=None), plain)
    assert torch.equal(teacher.window_logits(waves, masks=[None, None]), plain)
    assert torch.equal(teacher.logits(waves), plain)


def test_mask_changes_only_its_own_example(teacher):
    waves = waves_for(teacher)
    plain = teacher.window_logits(waves)
    centres = teacher.centre_frequencies()
    for mask in (SpecMask(time_start=20, time_width=60),
                 SpecMask(freq_low_hz=float(centres[10]), freq_high_hz=float(centres[30]))):
        out = teacher.window_logits(waves, masks=[mask, None])
        assert (out[0] - plain[0]).abs().max() > 1e-4, mask
        torch.testing.assert_close(out[1], plain[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="1 masks for 2 waveforms"):
        teacher.window_logits(waves, masks=[None])


def test_model_receives_exactly_the_masked_features(teacher):
    waves = waves_for(teacher)
    centres = teacher.centre_frequencies()
    a, b = 7, 19
    unmasked = model_inputs(teacher, waves)
    T = unmasked.shape[1]
    masks = [SpecMask(time_start=30, time_width=25, freq_low_hz=float(centres[a]), freq_high_hz=float(centres[b])),
             SpecMask(time_start=T - 5, time_width=40)]   # runs past the end: clipped
    masked = model_inputs(teacher, waves, masks)
    expected = unmasked.clone()
    expected[0, 30:55] = 0.0
    expected[0, :, a:b + 1] = 0.0
    expected[1, T - 5:] = 0.0
    assert torch.equal(masked, expected)
    # the bins a band in Hz selects are those whose centres lie in it
    lo, hi = 1000.0, 3000.0
    masked = model_inputs(teacher, waves, [SpecMask(freq_low_hz=lo, freq_high_hz=hi), None])
    zero_bins = (masked[0] == 0).all(0).nonzero().flatten().tolist()
    assert zero_bins == ((centres >= lo) & (centres <= hi)).nonzero().flatten().tolist() and zero_bins
    assert torch.equal(masked[1], unmasked[1])


def test_htsat_time_masks_are_on_its_1001_frame_grid():
    teacher = make_teacher("htsat")
    feats = model_inputs(teacher, waves_for(teacher), [SpecMask(time_start=100, time_width=10), None])
    assert feats.shape[1] == teacher.config.num_frames == 1001 and teacher.frame_shift_ms() == 10.0
    assert (feats[0, 100:110] == 0).all() and (feats[0, 99] != 0).any() and (feats[0, 110] != 0).any()


def test_time_masks_need_10ms_frames():
    model = SSLAMClassifier(SSLAMConfig(embed_dim=32, depth=1, num_heads=2, num_classes=5, target_length=256))
    teacher = SSLAMTeacher(model, front_end=KaldiFbank(target_length=256, frame_shift=20.0))
    feats = torch.randn(1, 256, 128)
    with pytest.raises(ValueError, match="time masks need 10 ms frames"):
        teacher.mask_features(feats, [SpecMask(time_width=4)])
    out = teacher.mask_features(feats, [SpecMask(freq_low_hz=0.0, freq_high_hz=500.0)])  # frequency only is fine
    assert (out[0, :, :5] == 0).all()
