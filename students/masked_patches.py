"""Self-supervised masked-patch pretraining of the patch-token students (SSAST / SSAMBA).

A share of the filterbank's patches is replaced by a learned mask embedding (after the
patch projection, before positions are added), the whole sequence goes through the
student's encoder, and two small heads read the outputs at the masked positions:

* ``cpredlayer`` (discriminative): a prediction whose dot product with the true patch must
  be the largest among all masked patches of the same clip (InfoNCE over the clip's masked
  patches; no temperature and no normalisation, as SSAST);
* ``gpredlayer`` (generative): the patch itself (mean squared error).

The joint objective (SSAMBA's ``pretrain_joint``) runs the encoder twice with independent
masks, one for each head: ``nce_weight * nce + mse_weight * mse`` (1 and 10 by default).
Targets are the (normalised) filterbank values of each patch, frequency-major inside the
patch, like the patches' own order. Patches must not overlap (stride = patch size):
with overlap, a masked patch's content is visible in its neighbours and the task is trivial.

Masks follow SSAST's ``gen_maskid_patch``: squares of 3 x 3 to 5 x 5 patches (one size per
clip) at random places, added until enough patches are covered; a square that crosses the
last time patch of a row continues on the next row, as in the original. Two deliberate
differences: patch 0 may be masked (the original's ``> 0`` never masks it), and the mask is
exactly the first ``count`` distinct patches in the order the squares were drawn (the
original truncates a Python set, whose order favours low indices).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

#: State-dict keys of the pretext parts; a fine-tuning model has no use for them.
PRETEXT_KEYS = ("mask_embed", "cpredlayer.", "gpredlayer.", "p_input_fdim", "p_input_tdim")
OBJECTIVES = ("joint", "nce", "mse")


class PatchLayout(NamedTuple):
    """How an encoder cuts a (frames x mel bins) filterbank into patch tokens."""

    patch_size: int
    fstride: int
    tstride: int
    embed_dim: int
    num_mel_bins: int
    target_length: int

    def grid(self) -> tuple[int, int]:
        """(frequency, time) patches of a ``target_length``-frame filterbank."""
        return ((self.num_mel_bins - self.patch_size) // self.fstride + 1,
                (self.target_length - self.patch_size) // self.tstride + 1)


def patch_layout(encoder: nn.Module) -> PatchLayout:
    """The fields the encoder's own ``patch_layout()`` returns as a dict (the AST teacher's:
    transformers names them differently) or, for the Audio Mamba students, those of its config."""
    if hasattr(encoder, "patch_layout"):
        return PatchLayout(**encoder.patch_layout())
    cfg = encoder.config
    return PatchLayout(*(getattr(cfg, name) for name in PatchLayout._fields))


class PatchEncoder(Protocol):
    """What pretraining needs of a model: its patches, its per-patch outputs, a way to drop its
    classifier (timm's ``reset_classifier(0)``) and a :class:`PatchLayout` (from
    ``patch_layout()`` or its config)."""

    config: object

    def patchify(self, fbank: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]: ...

    def encode_patches(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor: ...

    def reset_classifier(self, num_classes: int) -> None: ...


def cluster_mask(grid: tuple[int, int], count: int, generator: torch.Generator | None = None,
                 min_cluster: int = 3, max_cluster: int = 5) -> torch.Tensor:
    """``count`` distinct patch indices (sorted) of a frequency-major ``grid``, masked in squares."""
    f, t = grid
    n = f * t
    _check_count(count, n)
    side = int(torch.randint(min_cluster, max_cluster + 1, (1,), generator=generator))
    offsets = (torch.arange(side).unsqueeze(1) * t + torch.arange(side).unsqueeze(0)).flatten()
    chosen: dict[int, None] = {}  # insertion-ordered set
    while len(chosen) < count:
        start = int(torch.randint(n, (1,), generator=generator))
        for idx in (start + offsets).tolist():
            if idx < n:
                chosen.setdefault(idx)
    return torch.tensor(sorted(list(chosen)[:count]), dtype=torch.long)


def random_mask(grid: tuple[int, int], count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` distinct patch indices (sorted), uniformly at random (SSAST's unclustered masks)."""
    n = grid[0] * grid[1]
    _check_count(count, n)
    return torch.randperm(n, generator=generator)[:count].sort().values


def _check_count(count: int, patches: int) -> None:
    if not 2 <= count < patches:
        raise ValueError(f"cannot mask {count} of {patches} patches: mask at least 2 (InfoNCE needs negatives) "
                         f"and fewer than all")


def patch_targets(fbank: torch.Tensor, patch_size: int, stride: tuple[int, int]) -> torch.Tensor:
    """(B, T, F) filterbank -> (B, N, patch_size**2): each patch's values, patches frequency-major
    (the order of the encoder's tokens), values frequency-major inside a patch."""
    image = fbank.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T)
    return F.unfold(image, patch_size, stride=stride).transpose(1, 2)


def info_nce(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SSAST's InfoNCE over each clip's masked patches: (B, M, K) predictions and targets ->
    (loss, accuracy). Row ``i`` of ``target @ pred^T`` is softmaxed over the predictions and
    must peak at ``i``; accuracy counts predictions whose best-matching target is their own."""
    scores = target @ pred.transpose(1, 2)  # (B, M, M)
    loss = -scores.log_softmax(dim=-1).diagonal(dim1=1, dim2=2).mean()
    own = torch.arange(scores.shape[1], device=scores.device)
    acc = (scores.argmax(dim=1) == own).float().mean()
    return loss, acc


def _prediction_head(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out))


class MaskedPatchPretraining(nn.Module):
    """A patch-token student (``encoder``) with the SSAST pretext heads; ``forward`` returns the losses.

    The encoder's classifier is dropped (replaced by an identity): pretraining has no labels.
    Keys are ``encoder.*`` plus SSAMBA's names for the pretext parts (``mask_embed``,
    ``cpredlayer``, ``gpredlayer``, and the pretraining input size ``p_input_fdim`` /
    ``p_input_tdim``).
    """

    def __init__(self, encoder: nn.Module, mask_patches: int, cluster: bool = True, objective: str = "joint",
                 nce_weight: float = 1.0, mse_weight: float = 10.0) -> None:
        super().__init__()
        cfg = self.layout = patch_layout(encoder)
        if (cfg.fstride, cfg.tstride) != (cfg.patch_size, cfg.patch_size):
            raise ValueError(f"masked-patch pretraining needs patches that do not overlap (fstride = tstride = "
                             f"{cfg.patch_size}), got strides {cfg.fstride} x {cfg.tstride}; a masked patch would be "
                             f"visible in its neighbours")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        self.grid = cfg.grid()
        _check_count(mask_patches, self.grid[0] * self.grid[1])
        self.encoder = encoder
        encoder.reset_classifier(0)  # the classifier has nothing to learn here
        D, K = cfg.embed_dim, cfg.patch_size ** 2
        self.mask_embed = nn.Parameter(torch.empty(1, 1, D))
        nn.init.xavier_normal_(self.mask_embed)
        self.cpredlayer = _prediction_head(D, K)
        self.gpredlayer = _prediction_head(D, K)
        self.register_buffer("p_input_fdim", torch.tensor(cfg.num_mel_bins))
        self.register_buffer("p_input_tdim", torch.tensor(cfg.target_length))
        self.mask_patches, self.cluster, self.objective = mask_patches, cluster, objective
        self.nce_weight, self.mse_weight = nce_weight, mse_weight

    def no_weight_decay(self) -> set[str]:
        inner = self.encoder.no_weight_decay() if hasattr(self.encoder, "no_weight_decay") else set()
        return {"mask_embed"} | {f"encoder.{n}" for n in inner}

    def draw_masks(self, batch: int, grid: tuple[int, int], generator: torch.Generator | None = None) -> torch.Tensor:
        """(batch, mask_patches) sorted patch indices, one independent mask per clip."""
        draw = cluster_mask if self.cluster else random_mask
        return torch.stack([draw(grid, self.mask_patches, generator) for _ in range(batch)])

    def masked_outputs(self, fbank: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Encoder outputs (B, M, D) at the masked patches ``ids`` (B, M)."""
        tokens, grid = self.encoder.patchify(fbank)
        mask = torch.zeros(tokens.shape[:2], dtype=tokens.dtype, device=tokens.device)
        mask = mask.scatter(1, ids, 1.0).unsqueeze(-1)
        tokens = tokens * (1 - mask) + mask * self.mask_embed.to(tokens.dtype)
        out = self.encoder.encode_patches(tokens, grid)
        return out.gather(1, ids.unsqueeze(-1).expand(-1, -1, out.shape[-1]))

    def forward(self, fbank: torch.Tensor, masks: tuple[torch.Tensor, ...] | None = None) -> dict[str, torch.Tensor]:
        """Losses on a (B, T, F) batch: ``loss`` and, per head used, ``nce`` + ``acc`` and ``mse`` (with
        ``mean_patch_mse``, the error of predicting the clip's mean masked patch, for reference).

        ``masks``: the patch indices to mask, one (B, M) tensor per encoder pass (two for the
        joint objective); drawn from torch's global generator when not given.
        """
        cfg = self.layout
        if fbank.shape[1] != cfg.target_length:
            raise ValueError(f"pretraining takes clips of the configured {cfg.target_length} frames, "
                             f"got {fbank.shape[1]}")
        heads = ("nce", "mse") if self.objective == "joint" else (self.objective,)
        if masks is None:
            masks = tuple(self.draw_masks(fbank.shape[0], self.grid).to(fbank.device) for _ in heads)
        if len(masks) != len(heads):
            raise ValueError(f"objective {self.objective!r} runs {len(heads)} masked pass(es), got {len(masks)} masks")
        target = patch_targets(fbank, cfg.patch_size, (cfg.fstride, cfg.tstride))
        out: dict[str, torch.Tensor] = {}
        loss = fbank.new_zeros(())
        for head, ids in zip(heads, masks):
            hidden = self.masked_outputs(fbank, ids)
            wanted = target.gather(1, ids.unsqueeze(-1).expand(-1, -1, target.shape[-1])).float()
            if head == "nce":
                out["nce"], out["acc"] = info_nce(self.cpredlayer(hidden).float(), wanted)
                loss = loss + self.nce_weight * out["nce"]
            else:
                out["mse"] = F.mse_loss(self.gpredlayer(hidden).float(), wanted)
                loss = loss + self.mse_weight * out["mse"]
                # The error of predicting each clip's mean masked patch: what a collapsed model reaches.
                out["mean_patch_mse"] = (wanted - wanted.mean(dim=1, keepdim=True)).pow(2).mean().detach()
        out["loss"] = loss
        return out


def split_pretraining_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
    """A :class:`MaskedPatchPretraining` state dict -> (the encoder's tensors in the student's own
    names, the (mel bins, frames) the positions were trained for)."""
    if "p_input_fdim" not in state or not any(k.startswith("encoder.") for k in state):
        raise ValueError("not a masked-patch pretraining state (no 'encoder.*' weights or 'p_input_fdim')")
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    return encoder, (int(state["p_input_fdim"]), int(state["p_input_tdim"]))
