"""The bidirectional Mamba mixer of Vision Mamba ("bimamba"), as AuM and SSAMBA use it.

Three variants, named as in the AuM paper (the ViM fork's ``bimamba_type`` in brackets):

- ``"fo-fo"`` (``none``): plain Mamba, forward scan only.
- ``"fo-bi"`` (``v1``): one forward causal conv, shared ``x_proj`` / ``dt_proj`` / ``D``; a
  second scan with its own ``A_b_log`` runs backwards over the conv output and its
  projections; ``out_proj(y_f + flip(y_b))``.
- ``"bi-bi"`` (``v2``): the backward branch has its own ``conv1d_b``, ``x_proj_b``,
  ``dt_proj_b``, ``A_b_log`` and ``D_b`` and runs on the flipped input projection (its conv
  runs backwards too); ``out_proj(y_f + flip(y_b))``, halved when ``divide_out`` (the fork's
  ``if_devide_out``).

Every branch is ``y = scan(u) + D*u`` gated by ``SiLU(z)``. Both directions go through one
``selective_scan`` call (channels stacked, B and C as two groups), which dispatches to
mamba-ssm's CUDA kernel or the fused CPU kernel; the short convolution dispatches to
causal-conv1d on CUDA. Parameter names are the original's, so its checkpoints load as they are.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from dass_distill.kernels.causal_conv1d import causal_conv1d
from dass_distill.kernels.selective_scan import selective_scan

from .layers import init_A_log_, init_dt_bias_

Variant = Literal["fo-fo", "fo-bi", "bi-bi"]
VARIANTS: dict[str, str] = {"fo-fo": "none", "fo-bi": "v1", "bi-bi": "v2"}  # ours -> the fork's bimamba_type


class BiMamba(nn.Module):
    """Mamba mixer over a (B, L, D) token sequence, forward-only or bidirectional."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        variant: Variant = "bi-bi",
        divide_out: bool = True,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.variant, self.divide_out = variant, divide_out
        self._dt_init = (dt_min, dt_max, dt_scale, dt_init_floor)

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state))
        self.D = nn.Parameter(torch.empty(d_inner))
        if variant != "fo-fo":
            self.A_b_log = nn.Parameter(torch.empty(d_inner, d_state))
        if variant == "bi-bi":
            self.conv1d_b = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias)
            self.x_proj_b = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
            self.dt_proj_b = nn.Linear(self.dt_rank, d_inner, bias=True)
            self.D_b = nn.Parameter(torch.empty(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        self.reset_ssm_parameters()

    def _ssm_params(self) -> list[tuple[nn.Linear, nn.Parameter, nn.Parameter]]:
        """(dt_proj, A_log, D) of each branch."""
        if self.variant == "fo-fo":
            return [(self.dt_proj, self.A_log, self.D)]
        if self.variant == "fo-bi":
            return [(self.dt_proj, self.A_log, self.D), (self.dt_proj, self.A_b_log, self.D)]
        return [(self.dt_proj, self.A_log, self.D), (self.dt_proj_b, self.A_b_log, self.D_b)]

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba's initialisation: dt ~ logUniform[dt_min, dt_max] through an inverse-softplus
        bias, dt_proj weights ~ U(+-dt_rank^-0.5 * dt_scale), A = -(1..N), D = 1."""
        dt_min, dt_max, dt_scale, floor = self._dt_init
        std = self.dt_rank**-0.5 * dt_scale
        for dt_proj, A_log, D in self._ssm_params():
            dt_proj.weight.uniform_(-std, std)
            init_dt_bias_(dt_proj.bias, dt_min, dt_max, floor)
            dt_proj.bias._no_reinit = True  # model-level inits leave it alone (mamba-ssm's flag)
            init_A_log_(A_log)
            D.fill_(1.0)
            for p in (A_log, D):
                p._no_weight_decay = True  # the recurrence's own constants (mamba-ssm)

    def _branch(self, x: Tensor, conv: nn.Conv1d | None, x_proj: nn.Linear, dt_proj: nn.Linear) -> tuple[Tensor, ...]:
        """(u, delta, B, C) of one direction; ``conv`` None: ``x`` is already convolved."""
        if conv is not None:
            x = causal_conv1d(x, conv.weight.squeeze(1), conv.bias, activation="silu")
        x_dbl = x_proj(x.transpose(1, 2))  # (B, L, R + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, dt_proj.weight).transpose(1, 2)  # the bias goes in the scan (fp32)
        return x, delta, B.transpose(1, 2), C.transpose(1, 2)

    def forward(self, hidden: Tensor) -> Tensor:
        """(B, L, D) -> (B, L, D)."""
        xz = self.in_proj(hidden).transpose(1, 2)  # (B, 2 * d_inner, L)
        x, z = xz.chunk(2, dim=1)
        forward = self._branch(x, self.conv1d, self.x_proj, self.dt_proj)
        zs = [z]
        if self.variant == "fo-bi":  # the forward conv output and its projections, reversed
            branches = [forward, tuple(t.flip(-1) for t in forward)]
            zs.append(z.flip(-1))
        elif self.variant == "bi-bi":  # the reversed input through the backward branch's own layers
            x_b, z_b = xz.flip(-1).chunk(2, dim=1)
            branches = [forward, self._branch(x_b, self.conv1d_b, self.x_proj_b, self.dt_proj_b)]
            zs.append(z_b)
        else:
            branches = [forward]
        params = self._ssm_params()
        # One scan for both directions: channels stacked, each direction's B and C one group.
        y = selective_scan(
            torch.cat([b[0] for b in branches], dim=1),
            torch.cat([b[1] for b in branches], dim=1),
            torch.cat([-torch.exp(A_log.float()) for _, A_log, _ in params]),
            torch.stack([b[2] for b in branches], dim=1),
            torch.stack([b[3] for b in branches], dim=1),
            torch.cat([D.float() for _, _, D in params]),
            delta_bias=torch.cat([dt_proj.bias.float() for dt_proj, _, _ in params]),
            delta_softplus=True,
        )
        y = y * F.silu(torch.cat(zs, dim=1))
        if len(branches) == 2:
            y_f, y_b = y.chunk(2, dim=1)
            y = y_f + y_b.flip(-1)
            if self.variant == "bi-bi" and self.divide_out:
                y = y / 2
        return self.out_proj(y.transpose(1, 2))
