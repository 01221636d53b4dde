"""Masked-patch pretraining (``dass-distill pretrain``): the masks, both pretext losses against
hand computations, a tiny run whose loss falls, resume equality, and the hand-off into ``train``."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import cli, latest_weights

from dass_distill.errors import UserError
from dass_distill.students import create_model
from dass_distill.students.masked_patches import (
    MaskedPatchPretraining,
    cluster_mask,
    info_nce,
    patch_targets,
    random_mask,
)
from dass_distill.students.vim import resize_bilinear_antialias, resize_crop_or_interpolate
from dass_distill.teachers.ast import ASTClassifier, ast_config
from dass_distill.teachers.ast_finetune import resize_positions
from dass_distill.training.config import PretrainConfig, load_config

TINY = {"depth": 2, "embed_dim": 32}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


AST_TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def _pretext(model: str = "aum_tiny", frames: int = 150, masked: int = 20, **kw) -> MaskedPatchPretraining:
    if model == "ast_tiny":
        encoder = ASTClassifier.from_config(ast_config(AST_TINY, 1, frames, frequency_stride=16, time_stride=16))
    else:
        encoder = create_model(model, num_classes=1, target_length=frames, fstride=16, tstride=16, **TINY)
    return MaskedPatchPretraining(encoder, masked, **kw)


# ------------------------------------------------------------------ masks
def test_cluster_mask_counts_range_and_determinism():
    grid = (8, 12)
    for seed in range(20):
        ids = cluster_mask(grid, 40, _gen(seed))
        assert ids.shape == (40,) and ids.unique().numel() == 40
        assert torch.equal(ids, ids.sort().values) and 0 <= int(ids.min()) and int(ids.max()) < 96
        assert torch.equal(ids, cluster_mask(grid, 40, _gen(seed)))  # the seed decides the mask
    assert len({tuple(cluster_mask(grid, 40, _gen(s)).tolist()) for s in range(20)}) == 20


@pytest.mark.parametrize("side", [3, 4, 5])
def test_cluster_mask_draws_squares(side):
    """One square's worth of patches is one side x side square of the frequency-major grid
    (row-major: ``f * T + t``) when it does not run off the end of the grid."""
    grid = (20, 30)
    n, squares = grid[0] * grid[1], 0
    for seed in range(40):
        ids = cluster_mask(grid, side * side, _gen(seed), min_cluster=side, max_cluster=side)
        start = int(ids.min())
        square = sorted(start + grid[1] * i + j for i in range(side) for j in range(side))
        if ids.tolist() == square:
            squares += 1
        else:  # the first square ran off the end of the grid (cut), and a second one filled in
            assert int(ids.max()) >= n - (side - 1) * (grid[1] + 1)
    assert squares >= 30


def test_cluster_sizes_are_three_to_five():
    sides = set()
    for seed in range(60):
        ids = cluster_mask((20, 30), 9, _gen(seed))
        rows = {i // 30 for i in ids.tolist()}
        sides.add(len(rows))
    assert sides <= {2, 3, 4, 5} and {3} <= sides  # 9 patches of a 4- or 5-square span 2 rows


def test_random_mask_and_bad_counts():
    ids = random_mask((8, 12), 30, _gen(0))
    assert ids.unique().numel() == 30 and torch.equal(ids, ids.sort().values)
    assert torch.equal(ids, random_mask((8, 12), 30, _gen(0)))
    for count in (1, 96, 200):
        with pytest.raises(ValueError, match="cannot mask"):
            cluster_mask((8, 12), count)


def test_draw_masks_one_per_clip():
    model = _pretext()
    masks = model.draw_masks(4, model.grid, _gen(1))
    assert masks.shape == (4, 20) and len({tuple(m.tolist()) for m in masks}) == 4


# ------------------------------------------------------------------ targets and losses
def test_patch_targets_are_the_tokens_inputs():
    """Target n is exactly what the patch projection turns into token n (same patch, same order)."""
    encoder = create_model("ssamba_tiny", num_classes=1, target_length=150, fstride=16, tstride=16, **TINY)
    x = torch.randn(2, 150, 128, generator=_gen(0))
    tokens, grid = encoder.patchify(x)
    proj = encoder.v.patch_embed.proj
    targets = patch_targets(x, 16, (16, 16))
    assert targets.shape == (2, grid[0] * grid[1], 256)
    torch.testing.assert_close(targets @ proj.weight.flatten(1).T + proj.bias, tokens, rtol=1e-4, atol=1e-4)
    # patch (f=1, t=2): frames 32..47, mel bins 16..31, frequency-major inside the patch
    n = 1 * grid[1] + 2
    torch.testing.assert_close(targets[0, n], x[0, 32:48, 16:32].T.flatten())


def test_info_nce_against_a_hand_computation():
    pred, target = torch.randn(2, 5, 7, generator=_gen(0)), torch.randn(2, 5, 7, generator=_gen(1))
    loss, acc = info_nce(pred, target)
    total, hits = 0.0, 0
    for b in range(2):
        for i in range(5):
            scores = [sum(float(target[b, i, k] * pred[b, j, k]) for k in range(7)) for j in range(5)]
            total -= scores[i] - math.log(sum(math.exp(s) for s in scores))
        for j in range(5):  # prediction j is right when its best-matching target is its own
            column = [sum(float(target[b, i, k] * pred[b, j, k]) for k in range(7)) for i in range(5)]
            hits += int(max(range(5), key=column.__getitem__) == j)
    assert float(loss) == pytest.approx(total / 10, rel=1e-5)
    assert float(acc) == pytest.approx(hits / 10)


def test_joint_loss_is_nce_plus_ten_mse_by_hand():
    model = _pretext(masked=20).eval()
    x = torch.randn(3, 150, 128, generator=_gen(2))
    masks = tuple(model.draw_masks(3, model.grid, _gen(s)) for s in (3, 4))
    out = model(x, masks=masks)
    targets = patch_targets(x, 16, (16, 16))
    pick = lambda t, ids: torch.stack([t[b, ids[b]] for b in range(3)])  # noqa: E731
    nce, _ = info_nce(model.cpredlayer(model.masked_outputs(x, masks[0])), pick(targets, masks[0]))
    mse = ((model.gpredlayer(model.masked_outputs(x, masks[1])) - pick(targets, masks[1])) ** 2).mean()
    torch.testing.assert_close(out["nce"], nce)
    torch.testing.assert_close(out["mse"], mse)
    torch.testing.assert_close(out["loss"], nce + 10 * mse)
    one = _pretext(masked=20, objective="mse").eval()
    with pytest.raises(ValueError, match="1 masked pass"):
        one(x, masks=masks)


def test_ast_patch_hooks_are_the_models_own_computation():
    """patchify + encode_patches = the transformers AST's hidden states at the patches; the pretext
    wrapper drops its classifier and reads its layout in the students' names."""
    model = ASTClassifier.from_config(ast_config(AST_TINY, 3, 150, frequency_stride=16, time_stride=16)).eval()
    x = torch.randn(2, 150, 128, generator=_gen(1))
    tokens, grid = model.patchify(x)
    assert grid == (8, 9) and tokens.shape == (2, 72, 32)
    expected = model.ast.audio_spectrogram_transformer(input_values=x).last_hidden_state[:, 2:]
    torch.testing.assert_close(model.encode_patches(tokens, grid), expected)
    with pytest.raises(ValueError, match="position table"):
        model.encode_patches(tokens, (9, 8))
    pretext = MaskedPatchPretraining(model, 20)
    assert pretext.grid == (8, 9) and not any(k.startswith("encoder.ast.classifier") for k in pretext.state_dict())
    with pytest.raises(ValueError, match="do not overlap"):
        MaskedPatchPretraining(ASTClassifier.from_config(ast_config(AST_TINY, 1, 150, frequency_stride=16)), 20)


@pytest.mark.parametrize("model_name", ["aum_tiny", "ssamba_tiny", "ast_tiny"])
def test_masked_patches_are_hidden_from_the_encoder(model_name):
    """Whatever is inside the masked patches, the outputs are the same; an unmasked patch matters."""
    model = _pretext(model_name, masked=30).eval()
    x = torch.randn(1, 150, 128, generator=_gen(5))
    ids = model.draw_masks(1, model.grid, _gen(6))
    before = model.masked_outputs(x, ids)
    changed = x.clone()
    T = model.grid[1]
    for n in ids[0].tolist():
        f, t = divmod(n, T)
        changed[0, t * 16:(t + 1) * 16, f * 16:(f + 1) * 16] = torch.randn(16, 16)
    torch.testing.assert_close(model.masked_outputs(changed, ids), before)
    kept = next(n for n in range(model.grid[0] * T) if n not in set(ids[0].tolist()))
    f, t = divmod(kept, T)
    changed[0, t * 16:(t + 1) * 16, f * 16:(f + 1) * 16] += 1.0
    assert not torch.allclose(model.masked_outputs(changed, ids), before)


def test_overlapping_patches_are_refused():
    encoder = create_model("ssamba_tiny", num_classes=1, target_length=150, **TINY)  # stride 10
    with pytest.raises(ValueError, match="do not overlap"):
        MaskedPatchPretraining(encoder, 20)


# ------------------------------------------------------------------ runs
def _overrides(synth_data, out, **extra) -> list[str]:
    items = {"model": "aum_tiny", "model_args.depth": 2, "model_args.embed_dim": 32,
             "data.train": synth_data["train_manifest"], "data.eval": synth_data["eval_manifest"],
             "data.target_length": 150, "data.num_workers": 0, "data.memoize_features": True,
             "optim.batch_size": 4, "optim.lr": 2e-3, "optim.warmup_steps": 5, "optim.optimizer": "adamw",
             "masking.mask_patches": 24, "output_dir": str(out), "log_every": 1, **extra}
    return [f"{k}={v}" for k, v in items.items() if v is not None]  # None: leave the key out


def _losses(run) -> list[str]:
    return [r for r in (run / "metrics.csv").read_text().splitlines() if ",train,loss," in r]


def test_tiny_pretraining_learns(tmp_path, synth_data):
    """60 steps on 24 clips: the joint loss falls in training and on the held-out clips. (Beating the
    mean patch takes longer: see benchmarks/RESULTS.md, "Pretraining".)"""
    from dass_distill.training.pretrain import pretrain

    summary = pretrain(load_config(None, _overrides(synth_data, tmp_path / "run", **{"optim.epochs": 10}),
                                   PretrainConfig))
    assert summary["steps"] == 60 and summary["masked_patches"] == 24 and summary["patches"] == 72
    losses = [float(r.split(",")[-1]) for r in _losses(tmp_path / "run")]
    assert sum(losses[-10:]) / 10 < 0.95 * sum(losses[:10]) / 10
    evals = [float(r.split(",")[-1]) for r in (tmp_path / "run" / "metrics.csv").read_text().splitlines()
             if ",eval,loss," in r]
    assert len(evals) == 10 and evals[-1] < 0.97 * evals[0]
    assert summary["health"]["final_eval"]["loss"] == pytest.approx(evals[-1])
    info = json.loads((tmp_path / "run" / "model.json").read_text())
    assert info["task"] == "pretrain" and info["model_args"]["fstride"] == 16


def test_pretraining_resumes_exactly(tmp_path, synth_data):
    from dass_distill.training.pretrain import pretrain

    full = _overrides(synth_data, tmp_path / "full", **{"optim.epochs": 2, "save_every": 3, "data.eval": "null"})
    pretrain(load_config(None, full, PretrainConfig))
    part = _overrides(synth_data, tmp_path / "resumed", **{"optim.epochs": 2, "save_every": 3, "data.eval": "null"})
    pretrain(load_config(None, part + ["optim.max_steps=6"], PretrainConfig))
    summary = pretrain(load_config(None, part, PretrainConfig))
    assert summary["steps"] == 12
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "full")  # masks and drop-path replayed
    a, b = latest_weights(tmp_path / "full"), latest_weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="another config"):
        pretrain(load_config(None, part + ["masking.mask_patches=30"], PretrainConfig))


def test_pretraining_under_zero2_bf16_with_accumulation(tmp_path, synth_data):
    """DeepSpeed's ZeRO-2, bf16 autocast and gradient accumulation, as for train: optimizer steps
    counted after accumulation, fp32 master weights that consolidate for the hand-off."""
    from dass_distill.training.pretrain import pretrain

    run = tmp_path / "z2"
    summary = pretrain(load_config(None, _overrides(synth_data, run, **{
        "deepspeed.zero_stage": 2, "deepspeed.precision": "bf16", "deepspeed.gradient_accumulation_steps": 2,
        "optim.max_steps": 2, "data.eval": "null"}), PretrainConfig))
    assert summary["steps"] == 2 and summary["zero_stage"] == 2
    assert [r.split(",")[0] for r in _losses(run)] == ["1", "2"]
    state = latest_weights(run)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("model_name, frames", [("aum_tiny", 200), ("ssamba_tiny", 190), ("ast_tiny", 200)])
def test_train_starts_from_a_pretraining_run(tmp_path, synth_data, model_name, frames):
    """The encoder's weights carry over; positions are fitted to the new length (and, for SSAMBA
    and AST, to the fine-tuning stride 10) as the family resizes them; the head is new."""
    from dass_distill.training.checkpoint import load_trained_model
    from dass_distill.training.loop import train
    from helpers import base_overrides

    pre = tmp_path / "pre"
    from dass_distill.training.pretrain import pretrain

    if model_name == "ast_tiny":
        size = {f"model_args.{k}": v for k, v in AST_TINY.items()}
        stride = {"model_args.frequency_stride": 10, "model_args.time_stride": 10}
    else:
        size, stride = {"model_args.depth": 2, "model_args.embed_dim": 32}, {}
    pretrain(load_config(None, _overrides(synth_data, pre, model=model_name, **{
        "optim.max_steps": 2, "data.eval": "null", "model_args.depth": None, "model_args.embed_dim": None, **size}),
        PretrainConfig))
    source = latest_weights(pre)
    over = base_overrides(synth_data, tmp_path / "ft", model=model_name, **{
        **size, **stride, "pretrained": pre, "data.target_length": frames,
        "optim.max_steps": 1, "optim.lr": 1e-12, "optim.warmup_steps": 0, "data.eval": "null"})
    train(load_config(None, over))
    model, *_ = load_trained_model(tmp_path / "ft")
    state = model.module.state_dict()
    if model_name == "ast_tiny":
        # SSAST: pretrained at stride 16 on 150 frames (8 x 9), fine-tuned at stride 10 on 200 (12 x 19).
        layer = "ast.audio_spectrogram_transformer.layers.1.mlp.fc1.weight"
        torch.testing.assert_close(state[layer], source["encoder." + layer], rtol=1e-6, atol=1e-9)
        key = "ast.audio_spectrogram_transformer.embeddings.position_embeddings"
        assert state[key].shape[1] == 2 + 12 * 19
        torch.testing.assert_close(state[key], resize_positions(source["encoder." + key], (8, 9), (12, 19)),
                                   rtol=1e-5, atol=1e-7)
        return
    prefix = "v." if model_name == "ssamba_tiny" else ""
    layer = f"{prefix}layers.1.mixer.in_proj.weight"
    torch.testing.assert_close(state[layer], source["encoder." + layer], rtol=1e-6, atol=1e-9)
    cfg = model.module.config
    if model_name == "ssamba_tiny":
        assert (cfg.fstride, cfg.tstride) == (10, 10)
        table, key, resize = source["encoder.v.pos_embed"], "v.pos_embed", resize_crop_or_interpolate
    else:
        table, key, resize = source["encoder.pos_embed.pos_embed"], "pos_embed.pos_embed", resize_bilinear_antialias
    expected = torch.cat([table[:, :1], resize(table[:, 1:], (8, 9), cfg.grid())], dim=1)
    torch.testing.assert_close(state[key], expected, rtol=1e-5, atol=1e-7)


def test_pretraining_run_errors(tmp_path, synth_data):
    from dass_distill.export import export_run
    from dass_distill.training.loop import train
    from dass_distill.training.pretrain import pretrain
    from helpers import base_overrides

    with pytest.raises(UserError, match="patch-token models"):
        pretrain(load_config(None, _overrides(synth_data, tmp_path / "d", model="dass_tiny"), PretrainConfig))
    with pytest.raises(UserError, match="do not overlap"):
        pretrain(load_config(None, _overrides(synth_data, tmp_path / "o", **{"model_args.fstride": 10}),
                             PretrainConfig))
    pre = tmp_path / "pre"
    pretrain(load_config(None, _overrides(synth_data, pre, **{"optim.max_steps": 1, "data.eval": "null"}),
                         PretrainConfig))
    with pytest.raises(UserError, match="pretraining run of aum_tiny"):
        train(load_config(None, base_overrides(synth_data, tmp_path / "ft", model="ssamba_tiny", pretrained=pre,
                                               **{"model_args.depth": 2, "model_args.embed_dim": 32})))
    with pytest.raises(UserError, match="pretraining run"):
        export_run(pre, tmp_path / "export")
    ast_pre = tmp_path / "ast_pre"
    size = {f"model_args.{k}": v for k, v in AST_TINY.items()}
    pretrain(load_config(None, _overrides(synth_data, ast_pre, model="ast_tiny", **{
        "optim.max_steps": 1, "data.eval": "null", "model_args.depth": None, "model_args.embed_dim": None, **size}),
        PretrainConfig))
    with pytest.raises(UserError, match="does not fit 48-wide, 2-layer AST"):
        train(load_config(None, base_overrides(synth_data, tmp_path / "ast_ft", model="ast_tiny", pretrained=ast_pre,
                                               **{**size, "model_args.hidden_size": 48})))


def test_audio_lists(tmp_path, synth_data):
    from dass_distill.data.manifest import load_audio_list, load_manifest

    clips = load_manifest(synth_data["train_manifest"]).clips
    listing = tmp_path / "files.txt"
    listing.write_text("# unlabelled audio\n" + "\n".join(str(c.path) for c in clips[:5]) + "\n\n")
    assert [c.path for c in load_audio_list(listing).clips] == [c.path for c in clips[:5]]
    folder = clips[0].path.parent
    assert len(load_audio_list(folder)) == len(list(folder.glob("*.wav")))
    unlabelled = tmp_path / "unlabelled.csv"  # no label map beside it, no labels column
    unlabelled.write_text("path\n" + "\n".join(str(c.path) for c in clips[:3]))
    assert len(load_audio_list(unlabelled)) == 3 and load_audio_list(unlabelled).clips[0].labels == ()
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(UserError, match="is empty"):
        load_audio_list(tmp_path / "empty.txt")
    with pytest.raises(UserError, match="not found"):
        load_audio_list(tmp_path / "missing.txt")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(UserError, match="no audio files"):
        load_audio_list(tmp_path / "nothing")


def test_pretrain_command_line(tmp_path, synth_data):
    proc = cli("pretrain", "--model", "ssamba_tiny", "--output-dir", tmp_path / "run",
               *_overrides(synth_data, tmp_path / "run", **{"optim.max_steps": 2, "eval_every": 2})[1:])
    assert "done: 2 pretraining steps" in proc.stderr and "pretrained=" in proc.stderr  # rich console: stderr
    assert "eval" in (tmp_path / "run" / "metrics.csv").read_text()
    bad = cli("pretrain", f"data.train={tmp_path / 'nope.txt'}", check=False)
    assert bad.returncode != 0 and "data.train" in bad.stderr and "does not exist" in bad.stderr


@pytest.mark.slow
def test_kill_9_mid_pretraining_then_resume_matches_the_uninterrupted_run(tmp_path, synth_data):
    """SIGKILL after a checkpoint, rerun the same command: the same losses step for step
    (masks and drop-path replayed from the checkpointed RNG), the same final weights."""
    import signal
    import subprocess
    import sys

    from helpers import clean_env, kill_after_checkpoint

    env = {**clean_env(), "DS_ACCELERATOR": "cpu", "DASS_DISTILL_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}

    def command(run):
        return [sys.executable, "-m", "dass_distill.cli", "pretrain", *_overrides(synth_data, run, **{
            "optim.epochs": 2, "save_every": 1, "data.eval": "null", "data.memoize_features": False,
            "model_args.drop_path_rate": 0.1})]

    subprocess.run(command(tmp_path / "ref"), env=env, check=True, capture_output=True, timeout=900)
    run = tmp_path / "run"
    proc = kill_after_checkpoint(command(run), run, env, "step_0000007")  # into the second epoch
    assert proc.returncode == -signal.SIGKILL, "pretraining finished before it could be killed"
    resumed = subprocess.run(command(run), env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stderr
    assert _losses(run) == _losses(tmp_path / "ref")
    a, b = latest_weights(tmp_path / "ref"), latest_weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
