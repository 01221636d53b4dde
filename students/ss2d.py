"""SS2D: the 2D selective-scan mixer of VMamba's "v05_noz" block, as used by DASS."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from dass_distill.kernels import cross_merge, cross_scan, selective_scan

from .layers import LayerNorm2d, Linear2d, init_A_log_, init_dt_bias_

NUM_DIRECTIONS = 4


class SS2D(nn.Module):
    """Four-direction selective scan over a (B, C, H, W) feature map.

    in-proj (1x1, no gate) -> depthwise 3x3 conv + SiLU -> cross-scan into 4 sequences
    -> per-direction input-dependent (dt, B, C) -> selective scan -> cross-merge
    -> LayerNorm -> 1x1 out-proj. Parameter names follow VMamba so its checkpoints load.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 1,
        ssm_ratio: float = 1.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        d_inner = int(ssm_ratio * d_model)
        self.d_inner = d_inner
        self.d_state = d_state
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        K = NUM_DIRECTIONS

        self.in_proj = Linear2d(d_model, d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=False)
        self.act = nn.SiLU()

        # Per-direction projections stored stacked, as VMamba does, so each direction
        # is one grouped matmul rather than four small ones.
        self.x_proj_weight = nn.Parameter(torch.empty(K, self.dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(K, d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(K, d_inner))
        self.A_logs = nn.Parameter(torch.empty(K * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(K * d_inner))
        for p in (self.A_logs, self.Ds, self.dt_projs_bias):
            p._no_weight_decay = True  # the recurrence's own constants; decaying them hurts (VMamba)
            p._keep_fp32 = True

        self.out_norm = LayerNorm2d(d_inner)
        self.out_proj = Linear2d(d_inner, d_model, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._dt_range = (dt_min, dt_max, dt_init_floor)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba's initialisation: dt ~ logUniform[dt_min, dt_max], A = -(1..N), D = 1."""
        dt_min, dt_max, floor = self._dt_range
        bound = self.d_inner**-0.5
        self.x_proj_weight.uniform_(-bound, bound)
        self.dt_projs_weight.uniform_(-(self.dt_rank**-0.5), self.dt_rank**-0.5)
        init_dt_bias_(self.dt_projs_bias, dt_min, dt_max, floor)
        init_A_log_(self.A_logs)
        self.Ds.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv2d(self.in_proj(x)))
        y = self.forward_core(x)
        return self.dropout(self.out_proj(y))

    def forward_core(self, x: torch.Tensor) -> torch.Tensor:
        B, D, H, W = x.shape
        K, N, R = NUM_DIRECTIONS, self.d_state, self.dt_rank
        L = H * W
        xs = cross_scan(x)  # (B, K, D, L)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        ys = selective_scan(
            xs.reshape(B, K * D, L),
            dts.reshape(B, K * D, L),
            -torch.exp(self.A_logs.float()),
            Bs.contiguous(),
            Cs.contiguous(),
            self.Ds.float(),
            delta_bias=self.dt_projs_bias.reshape(-1).float(),
            delta_softplus=True,
        )
        y = cross_merge(ys.reshape(B, K, D, L), H, W).reshape(B, D, H, W)
        return self.out_norm(y.to(x.dtype))
