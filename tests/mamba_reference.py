"""Functional float64 references of the bidirectional Mamba mixer and of the AuM and SSAMBA
forward passes, written from the architecture description (DESIGN.md §5) over a plain dict
of tensors in the originals' key names, and random-weight state dicts in those layouts.
Nothing here imports the modules under test."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def conv_loop(x, w, b):
    """Causal depthwise conv: y[:, d, t] = b[d] + sum_k w[d, k] * x[:, d, t - width + 1 + k]."""
    width, L = w.shape[1], x.shape[-1]
    y = torch.zeros_like(x)
    for t in range(L):
        for k in range(width):
            s = t - (width - 1) + k
            if s >= 0:
                y[:, :, t] += w[:, k] * x[:, :, s]
    return y + b[:, None]


def scan_loop(u, delta, A, B, C, D):
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t; y_t = C_t . h_t + D u_t; u, delta (b, d, L), B, C (b, n, L)."""
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(u.shape[-1]):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1) + D * u[:, :, t])
    return torch.stack(ys, dim=-1)


def _direction(x, z, p, conv, x_proj, dt_proj, A_log, D, N, R, convolve=True):
    if convolve:
        x = F.silu(conv_loop(x, p[conv + ".weight"][:, 0], p[conv + ".bias"]))
    x_dbl = torch.einsum("cd,bdl->bcl", p[x_proj + ".weight"], x)
    dt, B, C = x_dbl[:, :R], x_dbl[:, R:R + N], x_dbl[:, R + N:]
    delta = F.softplus(torch.einsum("dr,brl->bdl", p[dt_proj + ".weight"], dt) + p[dt_proj + ".bias"][:, None])
    return scan_loop(x, delta, -torch.exp(p[A_log]), B, C, p[D]) * F.silu(z)


def mixer(p: dict, prefix: str, hidden: torch.Tensor, variant: str, divide_out: bool = True) -> torch.Tensor:
    """The mixer: in_proj -> (x, z); the forward direction; the backward direction on the reversed
    sequence (fo-bi: the forward conv's output and the shared projections and D, its own A; bi-bi:
    every layer its own, the conv included); out_proj of the sum (halved for bi-bi with divide_out)."""
    q = {k[len(prefix):]: v for k, v in p.items() if k.startswith(prefix)}
    N = q["A_log"].shape[1]
    R = q["dt_proj.weight"].shape[1]
    xz = torch.einsum("ed,bld->bel", q["in_proj.weight"], hidden)
    x, z = xz.chunk(2, dim=1)
    y = _direction(x, z, q, "conv1d", "x_proj", "dt_proj", "A_log", "D", N, R)
    if variant == "fo-bi":
        xc = F.silu(conv_loop(x, q["conv1d.weight"][:, 0], q["conv1d.bias"]))
        y = y + _direction(xc.flip(-1), z.flip(-1), q, None, "x_proj", "dt_proj", "A_b_log", "D", N, R,
                           convolve=False).flip(-1)
    elif variant == "bi-bi":
        y_b = _direction(x.flip(-1), z.flip(-1), q, "conv1d_b", "x_proj_b", "dt_proj_b", "A_b_log", "D_b", N, R)
        y = (y + y_b.flip(-1)) / (2 if divide_out else 1)
    return torch.einsum("de,bel->bld", q["out_proj.weight"], y)


def _patch_tokens(p, prefix, fbank, fstride, tstride):
    """16x16 patches of the (F, T) image, frequency-major, projected by the conv weights."""
    img = fbank.transpose(1, 2).unsqueeze(1)
    w = p[prefix + "patch_embed.proj.weight"]
    k = w.shape[-1]
    cols = F.unfold(img, k, stride=(fstride, tstride))  # (B, k*k, N), blocks row-major over (F', T')
    tokens = torch.einsum("dk,bkn->bnd", w.reshape(w.shape[0], -1), cols) + p[prefix + "patch_embed.proj.bias"]
    grid = ((img.shape[2] - k) // fstride + 1, (img.shape[3] - k) // tstride + 1)
    return tokens, grid


def _rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _ln(x, w, b, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def aum_forward(p: dict, fbank: torch.Tensor, variant: str, fstride: int = 16, tstride: int = 16) -> torch.Tensor:
    """AuM on a (B, T, F) fbank whose grid matches the position table (no resize)."""
    depth = 1 + max(int(k.split(".")[1]) for k in p if k.startswith("layers."))
    tokens, grid = _patch_tokens(p, "", fbank, fstride, tstride)
    pos = p["pos_embed.pos_embed"]
    assert pos.shape[1] == 1 + grid[0] * grid[1]
    N = tokens.shape[1]
    tokens = tokens + pos[:, 1:]
    cls = (p["cls_token"] + pos[:, :1]).expand(tokens.shape[0], -1, -1)
    hidden = torch.cat([tokens[:, :N // 2], cls, tokens[:, N // 2:]], dim=1)
    residual = None
    for i in range(depth):
        residual = hidden if residual is None else residual + hidden
        hidden = mixer(p, f"layers.{i}.mixer.", _rms(residual, p[f"layers.{i}.norm.weight"]), variant)
    out = _rms(residual + hidden, p["norm_f.weight"])[:, N // 2]
    return out @ p["head.weight"].T + p["head.bias"]


def ssamba_forward(p: dict, fbank: torch.Tensor, head: str = "avgtok", fstride: int = 10,
                   tstride: int = 10) -> torch.Tensor:
    """SSAMBA (fine-tuning model) on a (B, T, F) fbank whose grid matches the position table."""
    v = "v."
    depth = 1 + max(int(k.split(".")[2]) for k in p if k.startswith("v.layers."))
    tokens, grid = _patch_tokens(p, v, fbank, fstride, tstride)
    x = torch.cat([p["v.cls_token"].expand(tokens.shape[0], -1, -1), tokens], dim=1) + p["v.pos_embed"]

    def block(i, h, r):
        r = h if r is None else r + h
        return mixer(p, f"v.layers.{i}.mixer.", _ln(r, p[f"v.layers.{i}.norm.weight"], p[f"v.layers.{i}.norm.bias"]),
                     "bi-bi"), r

    hidden, residual = x, None
    for i in range(0, depth, 2):
        h_f, r_f = block(i, hidden, residual)
        h_b, r_b = block(i + 1, hidden.flip(1), None if residual is None else residual.flip(1))
        hidden, residual = h_f + h_b.flip(1), r_f + r_b.flip(1)
    out = _ln(residual + hidden, p["v.norm_f.weight"], p["v.norm_f.bias"])
    out = _ln(out, p["v.norm_f.weight"], p["v.norm_f.bias"])
    pooled = out[:, 1:].mean(1) if head == "avgtok" else out[:, 0]
    pooled = _ln(pooled, p["mlp_head.0.weight"], p["mlp_head.0.bias"])
    return pooled @ p["mlp_head.1.weight"].T + p["mlp_head.1.bias"]


# --- random-weight checkpoints in the originals' layouts -------------------------------------

def mixer_keys(D: int, variant: str, d_state: int = 16) -> dict[str, tuple[int, ...]]:
    """The mamba_simple.Mamba parameters of one layer (bimamba fork) and their shapes."""
    E, R = 2 * D, math.ceil(D / 16)
    keys = {"A_log": (E, d_state), "D": (E,), "in_proj.weight": (2 * E, D), "conv1d.weight": (E, 1, 4),
            "conv1d.bias": (E,), "x_proj.weight": (R + 2 * d_state, E), "dt_proj.weight": (E, R),
            "dt_proj.bias": (E,), "out_proj.weight": (D, E)}
    if variant in ("fo-bi", "bi-bi"):
        keys["A_b_log"] = (E, d_state)
    if variant == "bi-bi":
        keys.update({"D_b": (E,), "conv1d_b.weight": (E, 1, 4), "conv1d_b.bias": (E,),
                     "x_proj_b.weight": (R + 2 * d_state, E), "dt_proj_b.weight": (E, R), "dt_proj_b.bias": (E,)})
    return keys


def _random(shape, g, key):
    t = torch.randn(shape, generator=g) * 0.2
    if key.endswith(("A_log", "A_b_log")):
        return torch.log(torch.rand(shape, generator=g) * 8 + 1)  # A in -[1, 9]
    if key.endswith(("dt_proj.bias", "dt_proj_b.bias")):
        return torch.rand(shape, generator=g) * 3 - 5  # softplus -> 0.007..0.13
    if key.endswith(("D", "D_b", "norm.weight", "norm_f.weight", "mlp_head.0.weight")):
        return 1 + t
    return t


def aum_checkpoint(D: int, depth: int, variant: str, grid: tuple[int, int], num_classes: int,
                   seed: int = 0, prefix: str = "") -> dict[str, torch.Tensor]:
    """An AuM ``torch.save(model.state_dict())`` (``prefix="module."`` as a DDP run writes it)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"cls_token": (1, 1, D), "head.weight": (num_classes, D), "head.bias": (num_classes,),
              "norm_f.weight": (D,), "patch_embed.proj.weight": (D, 1, 16, 16), "patch_embed.proj.bias": (D,),
              "pos_embed.pos_embed": (1, 1 + grid[0] * grid[1], D)}
    for i in range(depth):
        shapes.update({f"layers.{i}.mixer.{k}": s for k, s in mixer_keys(D, variant).items()})
        shapes[f"layers.{i}.norm.weight"] = (D,)
    return {prefix + k: _random(s, g, k) for k, s in shapes.items()}


def ssamba_checkpoint(D: int, depth: int, grid: tuple[int, int], num_classes: int | None, seed: int = 0,
                      input_size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """An SSAMBA DataParallel state dict: fine-tuned (``num_classes``) or pretrained (None: pretext
    heads, mask embedding and the pretraining input size instead of a classifier)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"v.cls_token": (1, 1, D), "v.pos_embed": (1, 1 + grid[0] * grid[1], D),
              "v.patch_embed.proj.weight": (D, 1, 16, 16), "v.patch_embed.proj.bias": (D,),
              "v.head.weight": (1000, D), "v.head.bias": (1000,), "v.norm_f.weight": (D,), "v.norm_f.bias": (D,)}
    for i in range(depth):
        shapes.update({f"v.layers.{i}.mixer.{k}": s for k, s in mixer_keys(D, "bi-bi").items()})
        shapes.update({f"v.layers.{i}.norm.weight": (D,), f"v.layers.{i}.norm.bias": (D,)})
    if num_classes is not None:
        shapes.update({"mlp_head.0.weight": (D,), "mlp_head.0.bias": (D,), "mlp_head.1.weight": (num_classes, D),
                       "mlp_head.1.bias": (num_classes,)})
    else:
        shapes.update({"mask_embed": (1, 1, D), "cpredlayer.0.weight": (D, D), "cpredlayer.0.bias": (D,),
                       "cpredlayer.2.weight": (256, D), "cpredlayer.2.bias": (256,), "gpredlayer.0.weight": (D, D),
                       "gpredlayer.0.bias": (D,), "gpredlayer.2.weight": (256, D), "gpredlayer.2.bias": (256,)})
    state = {"module." + k: _random(s, g, k) for k, s in shapes.items()}
    if num_classes is None:
        state["module.p_input_fdim"] = torch.tensor(input_size[0])
        state["module.p_input_tdim"] = torch.tensor(input_size[1])
    return state
