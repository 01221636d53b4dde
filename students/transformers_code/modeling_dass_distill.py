"""The dass-distill student families as transformers models (remote code, torch only).

Written into every exported student folder by dass-distill. Self-contained: it imports
torch and transformers, not dass-distill, mamba-ssm or Triton, and runs on any device with
plain torch ops (each selective scan is a chunked linear recurrence: two loops over sqrt(L) positions).
Parameter names are the folder's ``model.safetensors`` keys, so the weights load as saved.

Input: ``input_values``, the normalised Kaldi filterbank of the feature extractor,
(batch, frames, mel bins), or (batch, windows, frames, mel bins) for recordings cut into
windows; then a clip's logits are the max over its windows (the clip-level scores of
``dass-distill predict``'s timeline). Scores are ``sigmoid(logits)``: multi-label tagging.
"""

import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from .configuration_dass_distill import AuMConfig, CNNBaselineConfig, DassConfig, SsambaConfig

# ---------------------------------------------------------------------------- scans

def _scan(a, b):
    """``h_t = a_t * h_{t-1} + b_t`` along the last axis from ``h_{-1} = 0``.

    The sequence is cut into ``T`` chunks of ``K ~ sqrt(L)`` steps, laid out so that step ``k``
    of every chunk is one contiguous slice: a loop over ``K`` finds each chunk's end state from
    zero, the chunks' carries are the same recurrence over ``T`` (recursively), and a second
    loop replays every chunk from its carry. ``2K`` steps of whole-tensor ops instead of ``L``.
    """
    L = b.shape[-1]
    if L <= 16:  # short: the plain loop
        h, out = torch.zeros_like(b[..., 0]), []
        for t in range(L):
            h = a[..., t] * h + b[..., t]
            out.append(h)
        return torch.stack(out, dim=-1)
    K = math.isqrt(L)
    T = -(-L // K)
    if T * K != L:
        a = F.pad(a, (0, T * K - L), value=1.0)
        b = F.pad(b, (0, T * K - L))
    A = a.unflatten(-1, (T, K)).movedim(-1, 0).contiguous()  # (K, ..., T)
    B = b.unflatten(-1, (T, K)).movedim(-1, 0).contiguous()
    h = torch.zeros_like(B[0])
    for k in range(K):
        h = A[k] * h + B[k]
    ends = _scan(A.prod(0), h)  # the state after each chunk (T >= 4 chunks here)
    h = F.pad(ends[..., :-1], (1, 0))  # the state entering each chunk
    out = []
    for k in range(K):
        h = A[k] * h + B[k]
        out.append(h)
    return torch.stack(out, dim=-1).flatten(-2)[..., :L]


def linear_recurrence(log_a, b):
    """``h_t = exp(log_a_t) * h_{t-1} + b_t`` along the last axis from ``h_{-1} = 0``: plain torch
    ops, any device, differentiable."""
    return _scan(log_a.exp(), b)


def selective_scan(u, delta, A, B, C, D, delta_bias):
    """Mamba's S6 scan: ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t``, ``y_t = C_t h_t + D u_t``,
    ``dt = softplus(delta + delta_bias)``.

    ``u, delta``: (batch, dim, L); ``A``: (dim, N); ``B, C``: (batch, G, N, L), channel ``d``
    reading group ``d // (dim // G)``; ``D, delta_bias``: (dim,). Computed in fp32.
    """
    batch, dim, L = u.shape
    G, N = B.shape[1], A.shape[1]
    u32 = u.float()
    dt = F.softplus(delta.float() + delta_bias.float()[:, None])
    log_a = dt.unsqueeze(2) * A.float()[None, :, :, None]  # (batch, dim, N, L)
    b = ((dt * u32).view(batch, G, dim // G, 1, L) * B.float().unsqueeze(2)).view(batch, dim, N, L)
    h = linear_recurrence(log_a, b)
    y = (h.view(batch, G, dim // G, N, L) * C.float().unsqueeze(2)).sum(3).view(batch, dim, L)
    return (y + u32 * D.float()[:, None]).to(u.dtype)


def cross_scan(x):
    """(B, C, H, W) -> (B, 4, C, H*W): row-major, column-major, and both reversed."""
    rows, cols = x.flatten(2), x.transpose(2, 3).flatten(2)
    return torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)


def cross_merge(y, H, W):
    """(B, 4, C, H*W) -> (B, C, H*W) row-major: the four directions summed where they came from."""
    B, _, C, L = y.shape
    rows = y[:, 0] + y[:, 2].flip(-1)
    cols = y[:, 1] + y[:, 3].flip(-1)
    return rows + cols.reshape(B, C, W, H).transpose(2, 3).reshape(B, C, L)


class DropPath(nn.Module):
    """Stochastic depth (training only)."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


def _drop_path(p):
    return DropPath(p) if p > 0 else nn.Identity()


def _init_ssm_constants(A_log, D, dt_bias, dt_min=0.001, dt_max=0.1, floor=1e-4):
    """Mamba's initialisation (for models built from a config, not loaded): A = -(1..N), D = 1,
    dt ~ logUniform[dt_min, dt_max] stored as its inverse softplus."""
    with torch.no_grad():
        A_log.copy_(torch.log(torch.arange(1, A_log.shape[-1] + 1, dtype=torch.float32)).expand_as(A_log))
        D.fill_(1.0)
        dt = torch.exp(torch.rand_like(dt_bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=floor)
        dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))


# ---------------------------------------------------------------------------- DASS


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Linear2d(nn.Linear):
    """A per-pixel Linear (1x1 conv) keeping nn.Linear's weight shape."""

    def forward(self, x):
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)


class Mlp(nn.Module):
    def __init__(self, dim, hidden, drop=0.0):
        super().__init__()
        self.fc1 = Linear2d(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear2d(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SS2D(nn.Module):
    """Four-direction selective scan over a (B, C, H, W) map (VMamba's v05_noz mixer)."""

    def __init__(self, d_model, d_state=1, ssm_ratio=1.0, dt_rank="auto", d_conv=3):
        super().__init__()
        d_inner = int(ssm_ratio * d_model)
        self.d_inner, self.d_state = d_inner, d_state
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        K = 4
        self.in_proj = Linear2d(d_model, d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=False)
        self.act = nn.SiLU()
        self.x_proj_weight = nn.Parameter(torch.empty(K, self.dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(K, d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(K, d_inner))
        self.A_logs = nn.Parameter(torch.empty(K * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(K * d_inner))
        self.out_norm = LayerNorm2d(d_inner)
        self.out_proj = Linear2d(d_inner, d_model, bias=False)
        with torch.no_grad():
            self.x_proj_weight.uniform_(-(d_inner**-0.5), d_inner**-0.5)
            self.dt_projs_weight.uniform_(-(self.dt_rank**-0.5), self.dt_rank**-0.5)
        _init_ssm_constants(self.A_logs, self.Ds, self.dt_projs_bias)

    def forward(self, x):
        x = self.act(self.conv2d(self.in_proj(x)))
        B, D, H, W = x.shape
        N, R = self.d_state, self.dt_rank
        L = H * W
        xs = cross_scan(x)  # (B, 4, D, L)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        ys = selective_scan(xs.reshape(B, 4 * D, L), dts.reshape(B, 4 * D, L), -torch.exp(self.A_logs.float()),
                            Bs, Cs, self.Ds, self.dt_projs_bias.reshape(-1))
        y = cross_merge(ys.reshape(B, 4, D, L), H, W).reshape(B, D, H, W)
        return self.out_proj(self.out_norm(y.to(x.dtype)))


class VSSBlock(nn.Module):
    def __init__(self, dim, config, drop_path):
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.op = SS2D(dim, config.d_state, config.ssm_ratio, config.dt_rank, config.d_conv)
        self.drop_path = _drop_path(drop_path)
        self.norm2 = LayerNorm2d(dim)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio), config.drop_rate)

    def forward(self, x):
        x = x + self.drop_path(self.op(self.norm(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


# ---------------------------------------------------------------------------- Audio Mamba


class BiMamba(nn.Module):
    """Vision Mamba's mixer over (B, L, D) tokens: forward only (fo-fo), shared-conv backward
    scan (fo-bi), or a backward branch with its own layers on the reversed input (bi-bi)."""

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, variant="bi-bi", divide_out=True):
        super().__init__()
        self.d_inner = d_inner = int(expand * d_model)
        self.d_state = d_state
        self.dt_rank = math.ceil(d_model / 16)
        self.variant, self.divide_out = variant, divide_out
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state))
        self.D = nn.Parameter(torch.empty(d_inner))
        _init_ssm_constants(self.A_log, self.D, self.dt_proj.bias)
        if variant != "fo-fo":
            self.A_b_log = nn.Parameter(self.A_log.detach().clone())
        if variant == "bi-bi":
            self.conv1d_b = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
            self.x_proj_b = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
            self.dt_proj_b = nn.Linear(self.dt_rank, d_inner)
            self.D_b = nn.Parameter(torch.empty(d_inner))
            _init_ssm_constants(self.A_b_log, self.D_b, self.dt_proj_b.bias)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def _branch(self, x, conv, x_proj, dt_proj):
        if conv is not None:  # causal depthwise conv + SiLU
            x = F.silu(F.conv1d(F.pad(x, (conv.kernel_size[0] - 1, 0)), conv.weight, conv.bias, groups=x.shape[1]))
        x_dbl = x_proj(x.transpose(1, 2))
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        return x, F.linear(dt, dt_proj.weight).transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2)

    def forward(self, hidden):
        xz = self.in_proj(hidden).transpose(1, 2)
        x, z = xz.chunk(2, dim=1)
        forward = self._branch(x, self.conv1d, self.x_proj, self.dt_proj)
        params = [(self.dt_proj, self.A_log, self.D)]
        if self.variant == "fo-fo":
            branches, zs = [forward], [z]
        elif self.variant == "fo-bi":
            branches, zs = [forward, tuple(t.flip(-1) for t in forward)], [z, z.flip(-1)]
            params.append((self.dt_proj, self.A_b_log, self.D))
        else:
            x_b, z_b = xz.flip(-1).chunk(2, dim=1)
            branches = [forward, self._branch(x_b, self.conv1d_b, self.x_proj_b, self.dt_proj_b)]
            zs = [z, z_b]
            params.append((self.dt_proj_b, self.A_b_log, self.D_b))
        y = selective_scan(
            torch.cat([b[0] for b in branches], dim=1),
            torch.cat([b[1] for b in branches], dim=1),
            torch.cat([-torch.exp(A_log.float()) for _, A_log, _ in params]),
            torch.stack([b[2] for b in branches], dim=1),
            torch.stack([b[3] for b in branches], dim=1),
            torch.cat([D.float() for _, _, D in params]),
            torch.cat([dt_proj.bias.float() for dt_proj, _, _ in params]),
        )
        y = y * F.silu(torch.cat(zs, dim=1))
        if len(branches) == 2:
            y_f, y_b = y.chunk(2, dim=1)
            y = y_f + y_b.flip(-1)
            if self.variant == "bi-bi" and self.divide_out:
                y = y / 2
        return self.out_proj(y.transpose(1, 2))


class MambaBlock(nn.Module):
    """``residual += drop_path(hidden)``; ``hidden = mixer(norm(residual))`` (mamba-ssm's Block)."""

    def __init__(self, config, norm, drop_path, residual_in_fp32):
        super().__init__()
        self.mixer = BiMamba(config.embed_dim, config.d_state, config.d_conv, config.expand, config.variant)
        self.norm = norm
        self.drop_path = _drop_path(drop_path)
        self.residual_in_fp32 = residual_in_fp32

    def forward(self, hidden, residual):
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        hidden = self.norm(residual.to(self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.float()
        return self.mixer(hidden), residual


def _mamba_layers(config, norm, residual_in_fp32):
    steps = max(config.depth - 1, 1)
    rates = [0.0, *(config.drop_path_rate * i / steps for i in range(config.depth))][: config.depth]
    return nn.ModuleList(MambaBlock(config, norm(config.embed_dim, eps=config.norm_eps), rates[i], residual_in_fp32)
                         for i in range(config.depth))


class PatchEmbed(nn.Module):
    """(B, T, F) filterbank -> (B, N, D) patch tokens (frequency-major) and their (F, T) grid."""

    def __init__(self, config):
        super().__init__()
        self.patch_size = config.patch_size
        self.proj = nn.Conv2d(1, config.embed_dim, config.patch_size, stride=(config.fstride, config.tstride))

    def forward(self, fbank):
        if fbank.dim() != 3 or min(fbank.shape[1:]) < self.patch_size:
            raise ValueError(f"expected a (batch, frames >= {self.patch_size}, mel bins) filterbank, "
                             f"got {tuple(fbank.shape)}")
        x = self.proj(fbank.transpose(1, 2).unsqueeze(1))
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


def _grid_rows(table, grid):
    return table.reshape(1, grid[0], grid[1], -1).permute(0, 3, 1, 2)


def _flat_rows(table):
    return table.flatten(2).transpose(1, 2)


def resize_bilinear_antialias(rows, old, new):
    """AuM's resize of the patch position rows to another grid (bilinear, antialiased)."""
    if tuple(old) == tuple(new):
        return rows
    table = F.interpolate(_grid_rows(rows.float(), old), size=new, mode="bilinear", antialias=True)
    return _flat_rows(table).to(rows.dtype)


def resize_crop_or_interpolate(rows, old, new):
    """SSAST's / SSAMBA's resize: time axis first, then frequency; a shrinking axis is
    centre-cropped, a growing one bilinearly interpolated."""
    if tuple(old) == tuple(new):
        return rows
    table = _grid_rows(rows.float(), old)
    (f_old, t_old), (f_new, t_new) = old, new
    if t_new < t_old:
        start = t_old // 2 - t_new // 2
        table = table[:, :, :, start:start + t_new]
    elif t_new > t_old:
        table = F.interpolate(table, size=(f_old, t_new), mode="bilinear")
    if f_new < f_old:
        start = f_old // 2 - f_new // 2
        table = table[:, :, start:start + f_new, :]
    elif f_new > f_old:
        table = F.interpolate(table, size=(f_new, t_new), mode="bilinear")
    return _flat_rows(table).to(rows.dtype)


class PosEmbed(nn.Module):
    def __init__(self, rows, dim):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, rows, dim))


class VimBackbone(nn.Module):
    """SSAMBA's ViM encoder: class token first, layers in forward/backward pairs, norm_f twice."""

    def __init__(self, config):
        super().__init__()
        D = config.embed_dim
        self.grid = config.grid()
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], D))
        self.pos_drop = nn.Dropout(config.drop_rate)
        self.layers = _mamba_layers(config, nn.LayerNorm, residual_in_fp32=False)
        self.drop_path = _drop_path(config.drop_path_rate)
        self.norm_f = nn.LayerNorm(D, eps=config.norm_eps)

    def forward(self, fbank):
        tokens, grid = self.patch_embed(fbank)
        pos = torch.cat([self.pos_embed[:, :1], resize_crop_or_interpolate(self.pos_embed[:, 1:], self.grid, grid)],
                        dim=1)
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + pos
        hidden, residual = self.pos_drop(x), None
        for forward, backward in zip(self.layers[0::2], self.layers[1::2]):
            h_f, r_f = forward(hidden, residual)
            h_b, r_b = backward(hidden.flip(1), None if residual is None else residual.flip(1))
            hidden, residual = h_f + h_b.flip(1), r_f + r_b.flip(1)
        residual = residual + self.drop_path(hidden)
        return self.norm_f(self.norm_f(residual.to(self.norm_f.weight.dtype)))


# ---------------------------------------------------------------------------- transformers models


class _StudentForAudioClassification(PreTrainedModel):
    """Shared: windows -> max over windows, multi-label BCE loss, SequenceClassifierOutput."""

    main_input_name = "input_values"
    base_model_prefix = "student"
    supports_gradient_checkpointing = False

    def _init_weights(self, module):
        # Modules initialise themselves when built from a config; loaded weights replace it.
        pass

    def logits(self, fbank):
        """(B, T, F) filterbank -> (B, num_classes) logits."""
        raise NotImplementedError

    def forward(self, input_values, labels=None, return_dict=None, **kwargs):
        """``input_values`` (B, T, F), or (B, W, T, F) windows whose logits are max-pooled;
        ``labels`` (B, num_classes) multi-hot targets for a BCE loss."""
        if input_values.dim() == 4:
            B, W = input_values.shape[:2]
            logits = self.logits(input_values.flatten(0, 1)).view(B, W, -1).amax(dim=1)
        elif input_values.dim() == 3:
            logits = self.logits(input_values)
        else:
            raise ValueError(f"input_values must be (batch, frames, mel bins) or (batch, windows, frames, mel bins), "
                             f"got shape {tuple(input_values.shape)}")
        loss = None
        if labels is not None:
            loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return SequenceClassifierOutput(loss=loss, logits=logits)


class DassForAudioClassification(_StudentForAudioClassification):
    """DASS: stem (stride 4) -> 4 stages of VSS blocks -> pooled linear head."""

    config_class = DassConfig

    def __init__(self, config):
        super().__init__(config)
        d0 = config.dims[0]
        self.patch_embed = nn.Sequential(
            nn.Conv2d(config.in_chans, d0 // 2, 3, stride=2, padding=1), nn.Identity(), LayerNorm2d(d0 // 2),
            nn.Identity(), nn.GELU(), nn.Conv2d(d0 // 2, d0, 3, stride=2, padding=1), nn.Identity(), LayerNorm2d(d0))
        n = sum(config.depths)
        rates = [config.drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        self.layers = nn.ModuleList()
        for i, (depth, dim) in enumerate(zip(config.depths, config.dims)):
            start = sum(config.depths[:i])
            blocks = nn.Sequential(*(VSSBlock(dim, config, rates[start + j]) for j in range(depth)))
            down = (nn.Sequential(nn.Identity(), nn.Conv2d(dim, config.dims[i + 1], 3, stride=2, padding=1),
                                  nn.Identity(), LayerNorm2d(config.dims[i + 1]))
                    if i + 1 < len(config.dims) else nn.Identity())
            self.layers.append(nn.Sequential(OrderedDict(blocks=blocks, downsample=down)))
        self.classifier = nn.Sequential(OrderedDict(
            norm=LayerNorm2d(config.dims[-1]), permute=nn.Identity(), avgpool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1), head=nn.Linear(config.dims[-1], config.num_classes)))
        self.post_init()

    def logits(self, fbank):
        x = self.patch_embed(fbank.transpose(1, 2).unsqueeze(1))  # H = frequency, W = time
        for layer in self.layers:
            x = layer(x)
        return self.classifier(x)


class AuMForAudioClassification(_StudentForAudioClassification):
    """AuM: class token in the middle of the patch sequence, RMSNorm blocks, head on the class token."""

    config_class = AuMConfig

    def __init__(self, config):
        super().__init__(config)
        D = config.embed_dim
        self.grid = config.grid()
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = PosEmbed(1 + self.grid[0] * self.grid[1], D)
        self.pos_drop = nn.Dropout(config.drop_rate)
        self.layers = _mamba_layers(config, nn.RMSNorm, residual_in_fp32=True)
        self.drop_path = _drop_path(config.drop_path_rate)
        self.norm_f = nn.RMSNorm(D, eps=config.norm_eps)
        self.head = nn.Linear(D, config.num_classes)
        self.post_init()

    def logits(self, fbank):
        tokens, grid = self.patch_embed(fbank)
        table = self.pos_embed.pos_embed
        x = tokens + resize_bilinear_antialias(table[:, 1:], self.grid, grid)
        cls = (self.cls_token + table[:, :1]).expand(tokens.shape[0], -1, -1)
        middle = tokens.shape[1] // 2
        hidden, residual = self.pos_drop(torch.cat([x[:, :middle], cls, x[:, middle:]], dim=1)), None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual)
        residual = residual + self.drop_path(hidden)
        return self.head(self.norm_f(residual.to(self.norm_f.weight.dtype))[:, middle])


class SsambaForAudioClassification(_StudentForAudioClassification):
    """SSAMBA: the ViM encoder ``v``, then LayerNorm + Linear on the mean patch token or the class token."""

    config_class = SsambaConfig

    def __init__(self, config):
        super().__init__(config)
        self.v = VimBackbone(config)
        self.mlp_head = nn.Sequential(nn.LayerNorm(config.embed_dim), nn.Linear(config.embed_dim, config.num_classes))
        self.post_init()

    def logits(self, fbank):
        x = self.v(fbank)
        return self.mlp_head(x[:, 1:].mean(dim=1) if self.config.head == "avgtok" else x[:, 0])


class CNNBaselineForAudioClassification(_StudentForAudioClassification):
    """The plain CNN baseline: Conv-BN-ReLU-pool blocks, global average pooling, linear head."""

    config_class = CNNBaselineConfig

    def __init__(self, config):
        super().__init__(config)
        blocks, c_in = [], 1
        for c in config.channels:
            blocks += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*blocks)
        self.drop = nn.Dropout(config.drop_rate)
        self.head = nn.Linear(c_in, config.num_classes)
        self.post_init()

    def logits(self, fbank):
        x = self.features(fbank.transpose(1, 2).unsqueeze(1))
        return self.head(self.drop(x.mean(dim=(2, 3))))
