"""AuM and SSAMBA students: the models against the float64 references of tests/mamba_reference.py
(written from DESIGN.md §5, not from the modules), random-weight checkpoints in the originals'
layouts, position tables at other lengths, the SSAMBA pretrained -> fine-tuning hand-off, the
released configurations' sizes, and the toolkit's pipeline (train with KD, resume, export, predict)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from dass_distill.students import create_model, load_weights
from mamba_reference import (
    aum_checkpoint,
    aum_forward,
    ssamba_checkpoint,
    ssamba_forward,
)

from dass_distill.errors import UserError

D, DEPTH = 16, 4


def _rel(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def _fbank(frames: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, frames, 128, generator=torch.Generator().manual_seed(seed))


def _save(state: dict, tmp_path, name: str):
    path = tmp_path / name
    torch.save(state, path)
    return path


def _plain(state: dict) -> dict:
    """Checkpoint keys without ``module.``, in float64, for the references."""
    return {k.removeprefix("module."): v.double() for k, v in state.items()}


@pytest.mark.parametrize("variant", ["fo-fo", "fo-bi", "bi-bi"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_aum_checkpoint_loads_and_matches_reference(tmp_path, variant, prefix):
    frames = 80  # grid 8 x 5
    state = aum_checkpoint(D, DEPTH, variant, (8, 5), num_classes=7, prefix=prefix)
    model = create_model("aum_tiny", num_classes=7, target_length=frames, embed_dim=D, depth=DEPTH, variant=variant)
    load_weights(model, _save(state, tmp_path, "aum.pth")).eval()
    x = _fbank(frames)
    ref = aum_forward(_plain(state), x.double(), variant)
    assert _rel(model(x), ref) < 1e-4
    assert _rel(model.double()(x.double()), ref) < 1e-6  # the chunked scans carry ~1e-10 per layer in float64


@pytest.mark.parametrize("head", ["avgtok", "cls"])
def test_ssamba_finetuned_checkpoint_loads_and_matches_reference(tmp_path, head):
    frames = 67  # stride 10: grid 12 x 6
    state = ssamba_checkpoint(D, DEPTH, (12, 6), num_classes=5)
    model = create_model("ssamba_tiny", num_classes=5, target_length=frames, embed_dim=D, depth=DEPTH, head=head,
                         drop_path_rate=0.0)
    load_weights(model, _save(state, tmp_path, "ssamba.pth")).eval()  # ViM's unused v.head is dropped
    x = _fbank(frames)
    ref = ssamba_forward(_plain(state), x.double(), head)
    assert _rel(model(x), ref) < 1e-4
    assert _rel(model.double()(x.double()), ref) < 1e-6  # the chunked scans carry ~1e-10 per layer in float64


def test_other_lengths_resize_positions_as_the_originals():
    """AuM: bilinear with antialiasing over the whole grid; SSAMBA: centre crop of a shrinking axis,
    bilinear (no antialias) for a growing one. Checked on the position tables, and the model at an
    odd length equals the reference run with the resized table."""
    torch.manual_seed(0)
    aum = create_model("aum_tiny", num_classes=3, target_length=96, embed_dim=D, depth=2).double().eval()  # 8 x 6
    table = aum.pos_embed.pos_embed.detach()
    grid = table[:, 1:].reshape(1, 8, 6, D).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(8, 9), mode="bilinear", antialias=True).permute(0, 2, 3, 1).reshape(1, 72, D)
    torch.testing.assert_close(aum.positions((8, 9))[:, 1:], want)
    torch.testing.assert_close(aum.positions((8, 9))[:, :1], table[:, :1])
    x = _fbank(151, batch=1).double()  # (151 - 16) // 16 + 1 = 9 time patches
    p = {k: v.detach() for k, v in aum.state_dict().items()}
    p["pos_embed.pos_embed"] = torch.cat([table[:, :1], want], dim=1)
    assert _rel(aum(x), aum_forward(p, x, "bi-bi")) < 1e-6  # the chunked scans carry ~1e-10 per layer in float64

    ssamba = create_model("ssamba_tiny", num_classes=3, target_length=96, embed_dim=D, depth=2).double().eval()
    table = ssamba.v.pos_embed.detach()  # grid 12 x 9
    grid = table[:, 1:].reshape(1, 12, 9, D).permute(0, 3, 1, 2)
    shorter = grid[:, :, :, 9 // 2 - 5 // 2:][:, :, :, :5]  # 56 frames: 5 time patches, centre crop
    longer = F.interpolate(grid, size=(12, 20), mode="bilinear")  # 206 frames: 20 time patches
    for frames, want in ((56, shorter), (206, longer)):
        rows = want.permute(0, 2, 3, 1).reshape(1, -1, D)
        torch.testing.assert_close(ssamba.v.positions((12, want.shape[-1]))[:, 1:], rows)
        x = _fbank(frames, batch=1).double()
        p = {k: v.detach() for k, v in ssamba.state_dict().items()}
        p["v.pos_embed"] = torch.cat([table[:, :1], rows], dim=1)
        assert _rel(ssamba(x), ssamba_forward(p, x)) < 1e-6  # the chunked scans carry ~1e-10 per layer in float64


def test_aum_checkpoint_of_another_length_is_resized_on_load(tmp_path):
    state = aum_checkpoint(D, 2, "bi-bi", (8, 5), num_classes=3)
    model = create_model("aum_tiny", num_classes=3, target_length=160, embed_dim=D, depth=2)  # grid 8 x 10
    load_weights(model, _save(state, tmp_path, "aum.pth"))
    grid = state["pos_embed.pos_embed"][:, 1:].reshape(1, 8, 5, D).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(8, 10), mode="bilinear", antialias=True).permute(0, 2, 3, 1).reshape(1, 80, D)
    torch.testing.assert_close(model.pos_embed.pos_embed.detach()[:, 1:], want)


def test_ssamba_pretrained_checkpoint_initialises_fine_tuning(tmp_path):
    """Pretrained at 16x16 patches, stride 16, on 256 frames (grid 8 x 16); fine-tuned at stride 10
    on 200 frames (grid 12 x 19): the same patch weights at the new stride, the positions
    interpolated time first (8 x 16 -> 8 x 19) then frequency (-> 12 x 19), a new head."""
    from dass_distill.registry import family_of

    state = ssamba_checkpoint(D, DEPTH, (8, 16), num_classes=None, input_size=(128, 256))
    path = _save(state, tmp_path, "ssamba_pretrained.pth")
    model = create_model("ssamba_tiny", num_classes=4, target_length=200, embed_dim=D, depth=DEPTH)
    head_before = model.get_classifier().weight.detach().clone()
    with pytest.raises(UserError, match="self-supervised .* fine-tune it"):
        load_weights(model, path)
    assert family_of(model).init_from_released(model, path, list("abcd")) is False  # the head is new
    assert model.v.patch_embed.proj.stride == (10, 10)
    torch.testing.assert_close(model.v.patch_embed.proj.weight.detach(), state["module.v.patch_embed.proj.weight"])
    grid = state["module.v.pos_embed"][:, 1:].reshape(1, 8, 16, D).permute(0, 3, 1, 2)
    grid = F.interpolate(F.interpolate(grid, size=(8, 19), mode="bilinear"), size=(12, 19), mode="bilinear")
    want = torch.cat([state["module.v.pos_embed"][:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, D)], dim=1)
    torch.testing.assert_close(model.v.pos_embed.detach(), want)
    torch.testing.assert_close(model.v.layers[3].mixer.D_b.detach(), state["module.v.layers.3.mixer.D_b"])
    torch.testing.assert_close(model.get_classifier().weight.detach(), head_before)


def test_checkpoint_errors_are_one_line(tmp_path):
    aum = create_model("aum_tiny", num_classes=3, target_length=80, embed_dim=D, depth=2)
    ssamba = create_model("ssamba_tiny", num_classes=3, target_length=67, embed_dim=D, depth=2)
    aum_state = aum_checkpoint(D, 2, "bi-bi", (8, 5), num_classes=3)
    with pytest.raises(UserError, match="ssamba.*no 'module.v.\\*' backbone .* aum_\\* model"):
        load_weights(ssamba, _save(aum_state, tmp_path, "aum.pth"))
    with pytest.raises(UserError, match="looks like an SSAMBA checkpoint"):
        load_weights(aum, _save(ssamba_checkpoint(D, 2, (12, 6), 3), tmp_path, "ssamba.pth"))
    fo_bi = aum_checkpoint(D, 2, "fo-bi", (8, 5), num_classes=3)
    with pytest.raises(UserError, match=r"aum.pth lacks weight 'layers.0.mixer.D_b'"):
        load_weights(aum, _save(fo_bi, tmp_path, "aum.pth"))  # a Fo-Bi file into a Bi-Bi model
    deeper = aum_checkpoint(D, 3, "bi-bi", (8, 5), num_classes=3)
    with pytest.raises(UserError, match="unexpected weight 'layers.2."):
        load_weights(aum, _save(deeper, tmp_path, "deep.pth"))
    with pytest.raises(UserError, match="not found"):
        load_weights(aum, tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pth"):
        load_weights(aum, tmp_path / "junk.pth")


def test_released_configurations_and_options():
    from dass_distill.registry import model_config

    def count(name, **kw):
        cfg = model_config(name, **kw)
        with torch.device("meta"):  # sizes only, no memory
            return sum(p.numel() for p in create_model(name, **kw).parameters()), cfg

    n, cfg = count("aum_base")
    assert cfg.variant == "fo-bi" and abs(n - 92.1e6) / 92.1e6 < 0.01
    n, cfg = count("aum_small")
    assert cfg.variant == "bi-bi" and abs(n - 25.5e6) / 25.5e6 < 0.01
    n, cfg = count("ssamba_tiny")
    assert (cfg.fstride, cfg.head, cfg.depth) == (10, "avgtok", 24) and cfg.grid() == (12, 101)
    assert model_config("aum_small", variant="fo-fo", fstride=10).grid() == (12, 64)
    with pytest.raises(UserError, match="aum_small has no option 'head'"):
        model_config("aum_small", head="avgtok")
    with pytest.raises(UserError, match="variant must be one of"):
        model_config("aum_small", variant="v2")
    with pytest.raises(UserError, match="ssamba_tiny has no option 'variant'"):
        model_config("ssamba_tiny", variant="fo-bi")
    with pytest.raises(UserError, match="depth must be even"):
        create_model("ssamba_tiny", depth=3, embed_dim=8)


def test_no_weight_decay_and_classifier():
    aum = create_model("aum_tiny", num_classes=3, target_length=80, embed_dim=D, depth=2)
    skip = aum.no_weight_decay()
    assert {"cls_token", "pos_embed.pos_embed", "layers.1.mixer.A_b_log", "layers.0.mixer.D_b"} <= skip
    assert "layers.0.mixer.in_proj.weight" not in skip and aum.get_classifier() is aum.head
    # mamba-ssm's init: out_proj rescaled by 1/sqrt(depth), dt_proj.bias kept, other Linear biases zero
    bound = 1 / math.sqrt(2 * D) / math.sqrt(2)
    assert aum.layers[0].mixer.out_proj.weight.abs().max() <= bound + 1e-6
    assert aum.layers[0].mixer.dt_proj.bias.abs().min() > 0
    ssamba = create_model("ssamba_tiny", num_classes=3, target_length=67, embed_dim=D, depth=2)
    assert ssamba.get_classifier() is ssamba.mlp_head[1] and "v.pos_embed" in ssamba.no_weight_decay()


@pytest.fixture(scope="module")
def ast_cache(tmp_path_factory, synth_data):
    """A logit cache of a briefly trained AST teacher over the synthetic training clips."""
    from dass_distill.teachers import load_teacher
    from helpers import base_overrides

    from dass_distill.caching import build_cache
    from dass_distill.data.manifest import load_manifest
    from dass_distill.export import export_run
    from dass_distill.training.config import load_config
    from dass_distill.training.loop import train

    tmp = tmp_path_factory.mktemp("teacher")
    train(load_config(None, base_overrides(synth_data, tmp / "ast", model="ast_tiny", **{"optim.max_steps": 1})))
    export_run(tmp / "ast", tmp / "ast_export")
    build_cache([load_teacher(f"ast:{tmp / 'ast_export'}")], load_manifest(synth_data["train_manifest"]),
                tmp / "cache.h5", num_workers=0, command="test")
    return tmp / "cache.h5"


def _student(synth_data, out, model, cache, **extra):
    from helpers import base_overrides

    return base_overrides(synth_data, out, model=model, **{"distill.cache": cache, "model_args.embed_dim": 32,
                                                            "model_args.depth": 2, **extra})


def test_aum_distils_from_a_cache_resumes_exports_and_predicts(tmp_path, synth_data, ast_cache):
    from helpers import cli, latest_weights

    from dass_distill.export import export_run
    from dass_distill.training.config import load_config
    from dass_distill.training.loop import train

    over = _student(synth_data, tmp_path / "full", "aum_tiny", ast_cache, **{"model_args.variant": "fo-bi",
                                                                             "optim.max_steps": 4, "save_every": 2})
    full = train(load_config(None, over))
    assert full["distilled"] and full["steps"] == 4
    stop = _student(synth_data, tmp_path / "resumed", "aum_tiny", ast_cache, **{"model_args.variant": "fo-bi",
                                                                                "save_every": 2})
    train(load_config(None, stop + ["optim.max_steps=2"]))
    assert train(load_config(None, stop + ["optim.max_steps=4"]))["steps"] == 4
    w_full, w_res = latest_weights(tmp_path / "full"), latest_weights(tmp_path / "resumed")
    assert "layers.1.mixer.A_b_log" in w_full and "layers.1.mixer.D_b" not in w_full  # Fo-Bi
    for k in w_full:
        torch.testing.assert_close(w_res[k], w_full[k], rtol=1e-5, atol=1e-6)

    report = export_run(tmp_path / "full", tmp_path / "export", formats=["onnx", "pt2"])
    assert report.family == "aum" and report.max_abs_diff < 1e-4
    # one captured graph serves other lengths: the position resize is part of it
    assert {(c.format, c.frames) for c in report.checks} >= {(f, n) for f in ("hf", "onnx", "pt2") for n in (150, 376)}
    from dass_distill.data.manifest import load_manifest

    wav = load_manifest(synth_data["eval_manifest"]).clips[0].path
    proc = cli("predict", tmp_path / "export", wav, "--top-k", 2, "--timeline", "--window", 0.5, "--hop", 0.5)
    assert "max over windows" in proc.stdout + proc.stderr
    listing = cli("models")
    assert "aum_tiny" in listing.stdout + listing.stderr and "ssamba_small" in listing.stdout + listing.stderr


def test_ssamba_fine_tunes_from_a_pretrained_checkpoint_with_kd(tmp_path, synth_data, ast_cache):
    from dass_distill.export import export_run
    from dass_distill.inference import load_tagger
    from dass_distill.training.config import load_config
    from dass_distill.training.loop import train

    ckpt = tmp_path / "ssamba_pretrained.pth"
    torch.save(ssamba_checkpoint(32, 2, (8, 16), num_classes=None, input_size=(128, 256)), ckpt)
    summary = train(load_config(None, _student(synth_data, tmp_path / "run", "ssamba_tiny", ast_cache,
                                               **{"optim.max_steps": 2, "pretrained": ckpt})))
    assert summary["steps"] == 2 and summary["distilled"]
    export_run(tmp_path / "run", tmp_path / "export")
    with pytest.raises(UserError, match="not available for ssamba"):
        export_run(tmp_path / "run", tmp_path / "export2", formats=["onnx"])
    tagger = load_tagger(tmp_path / "export")
    assert tagger.kind == "ssamba" and tagger.module.config.grid() == (12, 14)
    from dass_distill.data.manifest import load_manifest

    tags = tagger.tag_file(load_manifest(synth_data["eval_manifest"]).clips[0].path, top_k=3)
    assert len(tags) == 3 and all(0 <= s <= 1 for _, s in tags)


def test_bf16_training_keeps_the_scan_constants_in_fp32(tmp_path, synth_data, ast_cache):
    """Under DeepSpeed bf16 the mixers compute A, D and the dt bias in fp32 (as DASS); the run's
    losses are finite and the consolidated weights come back fp32."""
    from dass_distill.training.checkpoint import load_trained_model
    from dass_distill.training.config import load_config
    from dass_distill.training.loop import train

    over = _student(synth_data, tmp_path / "bf16", "aum_tiny", ast_cache,
                    **{"deepspeed.precision": "bf16", "optim.max_steps": 2, "data.eval": "null"})
    summary = train(load_config(None, over))
    assert summary["steps"] == 2
    losses = [float(r.split(",")[-1]) for r in (tmp_path / "bf16" / "metrics.csv").read_text().splitlines()
              if ",train,loss," in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    model, *_ = load_trained_model(tmp_path / "bf16")
    assert all(p.dtype == torch.float32 for p in model.module.parameters())


def test_released_checkpoint_to_a_folder_that_tags_audio(tmp_path, synth_data):
    """The README's path for a released checkpoint: load it, write a model folder with the label
    list, tag a file with `dass-distill predict` on CPU; the scores are the reference's."""
    from pathlib import Path

    from dass_distill.students import save_pretrained
    from helpers import cli

    from dass_distill.data.audio import read_audio
    from dass_distill.data.manifest import LabelMap, load_manifest
    from dass_distill.frontend import KaldiFbank

    labels = LabelMap.from_csv(Path(synth_data["train_manifest"]).parent / "class_labels_indices.csv")
    state = aum_checkpoint(D, 2, "fo-bi", (8, 9), num_classes=len(labels))  # 150 frames: grid 8 x 9
    torch.save(state, tmp_path / "aum.pth")
    model = load_weights(create_model("aum_base", num_classes=len(labels), target_length=150, embed_dim=D, depth=2),
                         tmp_path / "aum.pth")
    fe = KaldiFbank(target_length=150)
    save_pretrained(model, tmp_path / "aum_folder", fe, list(labels.ids), list(labels.names))
    wav = load_manifest(synth_data["eval_manifest"]).clips[0].path
    out = tmp_path / "tags.json"
    cli("predict", tmp_path / "aum_folder", wav, "--top-k", 3, "--output", out)
    import json

    top = json.loads(out.read_text())[str(wav)][0]
    ref = torch.sigmoid(aum_forward(_plain(state), fe.one(read_audio(wav, 16000))[None].double(), "fo-bi"))[0]
    assert top["label"] == labels.names[int(ref.argmax())] and abs(top["score"] - ref.max().item()) < 1e-4
