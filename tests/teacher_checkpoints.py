"""Random-weight teachers saved in their original release formats (for tests)."""

from __future__ import annotations

import torch


def original_ast_state_dict(dim=128, depth=2, classes=5, fstride=10, tstride=10, tdim=1024, seed=0):
    """A random AST in the released layout: DataParallel ``module.`` keys, timm DeiT names,
    fused qkv, the unused 1000-class DeiT heads, and ``mlp_head``."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    n = ((128 - 16) // fstride + 1) * ((tdim - 16) // tstride + 1)
    sd = {"v.cls_token": r(1, 1, dim), "v.dist_token": r(1, 1, dim), "v.pos_embed": r(1, n + 2, dim),
          "v.patch_embed.proj.weight": r(dim, 1, 16, 16), "v.patch_embed.proj.bias": r(dim),
          "v.norm.weight": 1 + r(dim), "v.norm.bias": r(dim),
          "v.head.weight": r(1000, dim), "v.head.bias": r(1000),
          "v.head_dist.weight": r(1000, dim), "v.head_dist.bias": r(1000),
          "mlp_head.0.weight": 1 + r(dim), "mlp_head.0.bias": r(dim),
          "mlp_head.1.weight": r(classes, dim, scale=0.5), "mlp_head.1.bias": r(classes)}
    for i in range(depth):
        b = f"v.blocks.{i}."
        sd.update({b + "norm1.weight": 1 + r(dim), b + "norm1.bias": r(dim),
                   b + "attn.qkv.weight": r(3 * dim, dim, scale=0.2), b + "attn.qkv.bias": r(3 * dim),
                   b + "attn.proj.weight": r(dim, dim, scale=0.2), b + "attn.proj.bias": r(dim),
                   b + "norm2.weight": 1 + r(dim), b + "norm2.bias": r(dim),
                   b + "mlp.fc1.weight": r(4 * dim, dim, scale=0.2), b + "mlp.fc1.bias": r(4 * dim),
                   b + "mlp.fc2.weight": r(dim, 4 * dim, scale=0.2), b + "mlp.fc2.bias": r(dim)})
    return {"module." + k: v for k, v in sd.items()}


def perturb(model: torch.nn.Module, seed: int, skip: tuple[str, ...] = ()) -> torch.nn.Module:
    """Random non-trivial weights (1/sqrt(fan-in) matrices, gains near 1), leaving ``skip`` alone."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in skip:
                continue
            noise = torch.randn(p.shape, generator=g)
            if p.dim() >= 2:
                p.copy_(noise / p[0].numel() ** 0.5)
            elif name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)
    return model


def write_original_teachers(folder, num_classes: int = 12) -> dict[str, str]:
    """Tiny AST (.pth), HTS-AT (Lightning .ckpt) and SSLAM (fairseq .pt) in their release formats."""
    from dass_distill.teachers.htsat import FRONT_END_MATRICES, HTSATConfig, HTSATModel, save_htsat_checkpoint
    from dass_distill.teachers.sslam import SSLAMClassifier, SSLAMConfig, save_sslam_checkpoint

    paths = {"ast": folder / "audioset_16_16.pth", "htsat": folder / "htsat_audioset.ckpt",
             "sslam": folder / "sslam_as2m.pt"}
    torch.save(original_ast_state_dict(dim=64, depth=1, classes=num_classes, fstride=16, tstride=16, seed=21),
               paths["ast"])
    htsat = HTSATModel(HTSATConfig(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), num_classes=num_classes))
    perturb(htsat, 22, skip=tuple(FRONT_END_MATRICES))
    htsat.bn0.running_mean.copy_(torch.linspace(-30, -10, htsat.config.mel_bins))
    htsat.bn0.running_var.copy_(torch.linspace(40, 90, htsat.config.mel_bins))
    save_htsat_checkpoint(htsat, paths["htsat"])
    sslam = perturb(SSLAMClassifier(SSLAMConfig(embed_dim=32, depth=1, num_heads=2, num_classes=num_classes)), 23)
    save_sslam_checkpoint(sslam, paths["sslam"])
    return {k: str(v) for k, v in paths.items()}
