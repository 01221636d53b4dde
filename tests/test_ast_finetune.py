"""Fine-tuning an AST from a released checkpoint: positions adapted as the original code
adapts them, a new head for another label set, the head kept for the same one."""

import pytest
import torch
import torch.nn.functional as F

from dass_distill.training.config import load_config
from teacher_checkpoints import original_ast_state_dict

SMALL_AST = {"model_args.hidden_size": 64, "model_args.num_hidden_layers": 1, "model_args.num_attention_heads": 1,
             "model_args.intermediate_size": 256, "model_args.hidden_dropout_prob": 0.0}


def reference_positions(pos: torch.Tensor, f_dim: int, t_dim: int) -> torch.Tensor:
    """The original AST's adaptation of the 12 x 101 AudioSet table (ASTModel, audioset_pretrain=True)."""
    d = pos.shape[2]
    new = pos[:, 2:, :].detach().reshape(1, 1212, d).transpose(1, 2).reshape(1, d, 12, 101)
    if t_dim < 101:
        new = new[:, :, :, 50 - int(t_dim / 2): 50 - int(t_dim / 2) + t_dim]
    else:
        new = F.interpolate(new, size=(12, t_dim), mode="bilinear")
    if f_dim < 12:
        new = new[:, :, 6 - int(f_dim / 2): 6 - int(f_dim / 2) + f_dim, :]
    elif f_dim > 12:
        new = F.interpolate(new, size=(f_dim, t_dim), mode="bilinear")
    new = new.reshape(1, d, f_dim * t_dim).transpose(1, 2)
    return torch.cat([pos[:, :2, :], new], dim=1)


@pytest.mark.parametrize("f_dim,t_dim", [(12, 14), (12, 101), (12, 204), (8, 50), (13, 120), (6, 300)])
def test_resize_positions_matches_the_original(f_dim, t_dim):
    from dass_distill.teachers.ast_finetune import resize_positions

    pos = torch.randn(1, 2 + 12 * 101, 24, generator=torch.Generator().manual_seed(f_dim * 1000 + t_dim))
    out = resize_positions(pos, (12, 101), (f_dim, t_dim))
    assert out.shape == (1, 2 + f_dim * t_dim, 24)
    torch.testing.assert_close(out, reference_positions(pos, f_dim, t_dim), rtol=0, atol=0)


def _finetune(tmp_path, synth_data, pretrained, run="run", **extra):
    from dass_distill.training.checkpoint import load_trained_model
    from dass_distill.training.loop import train
    from helpers import base_overrides

    over = base_overrides(synth_data, tmp_path / run, model="ast_tiny", **{
        **SMALL_AST, "model_args.frequency_stride": 10, "model_args.time_stride": 10, "pretrained": pretrained,
        "optim.max_steps": 1, "optim.lr": 1e-12, "optim.warmup_steps": 0, "data.eval": "null", **extra})
    train(load_config(None, over))
    model, *_ = load_trained_model(tmp_path / run)
    return model.module.ast


def test_train_ast_from_original_pth(tmp_path, synth_data):
    sd = original_ast_state_dict(dim=64, depth=1, classes=527, fstride=10, tstride=10, tdim=1024, seed=4)
    torch.save(sd, tmp_path / "audioset_10_10_0.4593.pth")
    ast = _finetune(tmp_path, synth_data, tmp_path / "audioset_10_10_0.4593.pth")
    emb = ast.audio_spectrogram_transformer.embeddings
    # target length 150 at stride 10: 12 x 14 patches, cut from the middle of the 12 x 101 table
    torch.testing.assert_close(emb.position_embeddings, reference_positions(sd["module.v.pos_embed"], 12, 14))
    torch.testing.assert_close(emb.cls_token, sd["module.v.cls_token"])
    torch.testing.assert_close(emb.patch_embeddings.projection.weight, sd["module.v.patch_embed.proj.weight"])
    q, k, v = sd["module.v.blocks.0.attn.qkv.weight"].chunk(3)
    torch.testing.assert_close(ast.audio_spectrogram_transformer.layers[0].attention.k_proj.weight, k)
    # 12 synthetic classes, not AudioSet's 527: a new head, its bias at the label prior
    assert ast.classifier.dense.weight.shape == (12, 64)
    assert not torch.allclose(ast.classifier.layernorm.weight, sd["module.mlp_head.0.weight"])


def test_train_ast_from_transformers_folder_keeps_the_head_of_the_same_labels(tmp_path, synth_data):
    from dass_distill.data.synth import synth_label_map
    from dass_distill.teachers import load_teacher
    from dass_distill.teachers.ast import save_ast_folder

    lm = synth_label_map()
    sd = original_ast_state_dict(dim=64, depth=1, classes=len(lm), fstride=16, tstride=16, tdim=1024, seed=5)
    torch.save(sd, tmp_path / "ast_16_16.pth")
    teacher = load_teacher(f"ast:{tmp_path / 'ast_16_16.pth'}")
    cfg = teacher.model.config
    cfg.id2label, cfg.label2id = dict(enumerate(lm.names)), {n: i for i, n in enumerate(lm.names)}
    cfg.label_ids = list(lm.ids)
    save_ast_folder(teacher.model, tmp_path / "hf_ast")
    ast = _finetune(tmp_path, synth_data, tmp_path / "hf_ast")
    torch.testing.assert_close(ast.classifier.dense.weight, sd["module.mlp_head.1.weight"])
    torch.testing.assert_close(ast.classifier.dense.bias, sd["module.mlp_head.1.bias"])
    # 8 x 63 patches at stride 16 over 1024 frames -> 12 x 14 at stride 10 over 150: the frequency
    # axis is interpolated (12 > 8), the time axis cut (14 < 63)
    pos = ast.audio_spectrogram_transformer.embeddings.position_embeddings
    assert pos.shape == (1, 2 + 12 * 14, 64)


def test_pretrained_ast_of_another_size_is_one_line(tmp_path, synth_data):
    from dass_distill.teachers import CheckpointError
    from dass_distill.training.loop import train
    from helpers import base_overrides

    torch.save(original_ast_state_dict(dim=64, depth=1, classes=527, seed=6), tmp_path / "ast.pth")
    over = base_overrides(synth_data, tmp_path / "run", model="ast_tiny",
                          **{"pretrained": tmp_path / "ast.pth", "optim.max_steps": 1})
    with pytest.raises(CheckpointError, match=r"hidden_size=64.*--model ast_base"):
        train(load_config(None, over))
