"""Is the run learning? Collapse detection against the label prior and chance mAP.

A run has collapsed when, after warm-up, its training BCE stays at the BCE of
predicting every class's frequency for every clip (it learned the prior and nothing
else), or when its eval mAP is no better than a random ranking's. Either way the
model is useless, and the user is told so with the likely causes, instead of a
quiet summary.

The spread of the head's input features across eval clips (relative to their size)
tells two collapses apart. A model that has not found the signal yet still gives
different clips different features (a fresh ``dass_tiny``: 0.35); one whose features
lost their dependence on the input gives every clip the same ones (0.002, 1/200 of its
start), and no gradient is left to bring it back. The second is what too large an Adam
step before the labels' signal is found does (README, "Does it learn?").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

#: Training BCE at or above this share of the prior BCE counts as "at the prior"
#: (a model that learns anything gets clearly below it).
PRIOR_SHARE = 0.97
#: Eval mAP within this distance of chance counts as "at chance".
CHANCE_MARGIN = 0.03
#: Steps of smoothing for the training BCE (an exponential moving average).
EMA_STEPS = 50
#: Head inputs whose spread across clips (``FeatureSpread``) fell below this share of the
#: spread at the start are "the same for every clip": the features no longer depend on
#: the input. (The start differs by model: a fresh sslam_tiny's mean-pooled tokens
#: spread 0.011, a dass_tiny's pooled map 0.35.)
SPREAD_DROP = 0.05
#: A run whose smoothed training BCE was last at the prior after this share of its steps
#: "left the prior late": it learned, but spent so much of its budget on the plateau that
#: its result depends on when it left, i.e. on the seed (benchmarks/RESULTS.md, "How long
#: the student sits at the label prior").
LATE_SHARE = 0.4


@dataclass
class CollapseMonitor:
    """Watches the training BCE and the eval mAP of one run.

    ``prior_bce``: BCE of predicting the label prior (see ``label_prior.prior_bce``);
    ``chance_map``: expected eval mAP of random scores (None without an eval set);
    ``check_after``: the first step at which the loss is judged (after warm-up).
    """

    prior_bce: float
    chance_map: float | None
    check_after: int
    bce_ema: float | None = None
    last_map: float | None = None
    start_spread: float | None = None
    last_spread: float | None = None
    last_prior_step: int | None = None
    warned: set[str] = field(default_factory=set)

    def update(self, step: int, bce: float) -> str | None:
        """Feed one step's training BCE; returns a warning the first time the loss is judged
        to sit at the prior."""
        if not math.isfinite(bce):
            return None
        a = 2.0 / (EMA_STEPS + 1)
        self.bce_ema = bce if self.bce_ema is None else (1 - a) * self.bce_ema + a * bce
        if self.at_prior:
            self.last_prior_step = step
        if step >= self.check_after and self.at_prior and "prior" not in self.warned:
            self.warned.add("prior")
            return (f"step {step}: training BCE {self.bce_ema:.4f} is still at the label prior's "
                    f"{self.prior_bce:.4f}: so far the model predicts class frequencies and ignores the input "
                    f"(models trained from scratch can sit there for a few hundred steps; if it stays, the run "
                    f"has collapsed)")
        return None

    def evaluated(self, step: int, mAP: float, spread: float | None = None) -> str | None:
        """Record an evaluation (its mAP and, optionally, its ``FeatureSpread``); returns a
        warning when it is at chance level after warm-up."""
        self.last_map, self.last_spread = mAP, spread
        if step >= self.check_after and self.at_chance and "chance" not in self.warned:
            self.warned.add("chance")
            same = (f"; its features are the same for every clip (spread {spread:.1e})"
                    if self.features_collapsed else "")
            return f"step {step}: eval mAP {mAP:.4f} is at chance level ({self.chance_map:.4f} for random scores){same}"
        return None

    def state_dict(self) -> dict:
        """What a checkpoint keeps, so a resumed run judges as the uninterrupted one would."""
        return {"bce_ema": self.bce_ema, "last_map": self.last_map, "start_spread": self.start_spread,
                "last_spread": self.last_spread, "last_prior_step": self.last_prior_step,
                "warned": sorted(self.warned)}

    def load_state_dict(self, state: dict) -> None:
        self.bce_ema, self.last_map = state.get("bce_ema"), state.get("last_map")
        self.start_spread, self.last_spread = state.get("start_spread"), state.get("last_spread")
        self.last_prior_step = state.get("last_prior_step")
        self.warned = set(state.get("warned", ()))

    @property
    def at_prior(self) -> bool:
        return self.bce_ema is not None and self.bce_ema >= PRIOR_SHARE * self.prior_bce

    @property
    def at_chance(self) -> bool:
        return (self.chance_map is not None and self.last_map is not None and math.isfinite(self.last_map)
                and self.last_map <= self.chance_map + CHANCE_MARGIN)

    @property
    def features_collapsed(self) -> bool:
        """Whether the last evaluation gave every clip the same features (they collapsed)."""
        return (self.last_spread is not None and self.start_spread is not None
                and self.last_spread < SPREAD_DROP * self.start_spread)

    def left_prior_late(self, total_steps: int) -> bool:
        """Whether a run that learned sat at the prior past ``LATE_SHARE`` of its ``total_steps``."""
        return (not self.at_prior and self.last_prior_step is not None
                and self.last_prior_step >= LATE_SHARE * total_steps)

    def report(self, total_steps: int | None = None) -> dict:
        """What the run summary records; ``collapsed`` is judged on the final state, ``left_prior_late``
        (given the run's ``total_steps``) on when the training BCE last sat at the prior."""
        reasons = []
        if self.at_prior:
            reasons.append("training loss at the label prior")
        if self.at_chance:
            reasons.append("eval mAP at chance level")
        if self.features_collapsed:
            reasons.append("the same features for every clip")
        return {"collapsed": bool(reasons), "reasons": reasons, "prior_bce": round(self.prior_bce, 6),
                "final_train_bce": None if self.bce_ema is None else round(self.bce_ema, 6),
                "chance_mAP": None if self.chance_map is None else round(self.chance_map, 6),
                "final_eval_mAP": self.last_map,
                "start_feature_spread": None if self.start_spread is None else round(self.start_spread, 6),
                "final_feature_spread": None if self.last_spread is None else round(self.last_spread, 6),
                "last_step_at_prior": self.last_prior_step,
                "left_prior_late": None if total_steps is None else self.left_prior_late(total_steps)}


class FeatureSpread:
    """The spread of a layer's inputs across the clips of an evaluation, relative to their
    size: mean over channels of the std across clips, over the mean absolute value.

    Hooked on the model's head (``get_classifier()``) for one evaluation; sums are kept in
    float64, so any number of clips costs memory for one row of features. As a context
    manager it removes the hook on exit and leaves the result in ``value``.
    """

    def __init__(self, head: nn.Module) -> None:
        self.n, self.sum, self.sum_sq, self.sum_abs = 0, None, None, 0.0
        self._handle = head.register_forward_pre_hook(self._collect)

    def _collect(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach().double()
        if isinstance(module, nn.modules.conv._ConvNd):  # channels first (HTS-AT's token-semantic head)
            x = x.movedim(1, -1)
        x = x.reshape(-1, x.shape[-1])  # (clips, channels); a per-token head gives a row per token
        if self.sum is None:
            self.sum = torch.zeros(x.shape[-1], dtype=torch.float64)
            self.sum_sq = torch.zeros_like(self.sum)
        self.n += x.shape[0]
        self.sum += x.sum(0).cpu()
        self.sum_sq += (x * x).sum(0).cpu()
        self.sum_abs += float(x.abs().sum())

    def __enter__(self) -> "FeatureSpread":
        return self

    def __exit__(self, *exc) -> None:
        self.value = self.close()

    def close(self) -> float | None:
        """Remove the hook; the spread, or None when fewer than two rows were seen."""
        self._handle.remove()
        if self.n < 2 or self.sum_abs == 0:
            return None
        mean = self.sum / self.n
        var = (self.sum_sq / self.n - mean * mean).clamp(min=0) * self.n / (self.n - 1)
        return float(var.sqrt().mean() / (self.sum_abs / (self.n * mean.numel())))


def likely_causes(optimizer: str, lr: float, weight_decay: float, steps_after_warmup: int,
                  head_bias: str, kd_weight: float, distilling: bool, *, warmup_steps: int | None = None,
                  batch_size: int | None = None, features_collapsed: bool = False) -> list[str]:
    """The usual reasons for a collapsed run, most specific first, given its settings and
    whether its outputs ended up the same for every clip."""
    causes = []
    if optimizer == "adam" and weight_decay >= 1e-3:
        causes.append(f"optim.weight_decay={weight_decay:g} with optim.optimizer=adam is an L2 term inside Adam's "
                      f"normalised step: where the loss gradient is smaller it shrinks every weight by about lr "
                      f"per step, towards 0. Use optim.optimizer=adamw (decoupled decay) or a decay <= 1e-4")
    if features_collapsed:
        setting = f"optim.lr={lr:g}" + (f" after {warmup_steps} warm-up steps" if warmup_steps is not None else "") \
            + (f" at optim.batch_size={batch_size}" if batch_size is not None else "")
        causes.append(f"the features lost their dependence on the input (every clip gets the same features): "
                      f"{setting} is too large a step before the model has found the labels' signal. Lengthen "
                      f"optim.warmup_steps (a few hundred), raise optim.batch_size or lower optim.lr")
    if head_bias != "prior":
        causes.append("head_bias=zero starts every class at probability 0.5; the network then learns the "
                      "class frequencies by making its features input-independent. Use head_bias=prior")
    if lr > 3e-3:
        causes.append(f"optim.lr={lr:g} is high for Adam; try 3e-4 to 1e-3")
    elif lr < 5e-5:
        causes.append(f"optim.lr={lr:g} may be too low for training from scratch; try 3e-4 to 1e-3")
    if steps_after_warmup < 300:
        causes.append(f"only {steps_after_warmup} steps after warm-up: small models trained from scratch often "
                      f"sit at the prior for a few hundred steps; train longer (optim.epochs)")
    if distilling and kd_weight >= 0.9:
        causes.append(f"distill.kd_weight={kd_weight:g} leaves little label signal; check the teacher "
                      f"('dass-distill evaluate' on its exported folder)")
    causes.append("labels or audio that carry no signal: check the manifest's labels and that the clips are "
                  "not silent ('dass-distill predict' on a few files)")
    return causes


def late_start_advice(last_prior_step: int, total_steps: int, freq_mask: int, from_cache_views: bool) -> str:
    """Why a run that learned only after a long stay at the label prior is fragile, and what to change."""
    share = last_prior_step / max(total_steps, 1)
    masks = ""
    if freq_mask > 0 and not from_cache_views:
        masks = (f" SpecAugment frequency masks (augment.freq_mask={freq_mask}) lengthen that stay: on 10 spoken "
                 f"words they doubled it for dass_tiny (benchmarks/RESULTS.md); try augment.freq_mask=0.")
    return (f"The training BCE left the label prior only at step {last_prior_step} of {total_steps} "
            f"({share:.0%} of the run). The model learned, but so late that its result depends on when it left, "
            f"i.e. on the seed; another seed may stay at the prior.{masks} Training longer (optim.epochs, with "
            f"optim.lr_decay_start_epoch) gives it room to finish.")


@dataclass
class PretextMonitor:
    """Watches a masked-patch pretraining run: is the encoder learning anything about the patches?

    Collapsed means, after ``check_after`` steps: the InfoNCE accuracy is no better than twice
    chance (``1 / masked patches``) with the loss still at ``log(masked patches)``, or the
    reconstruction error no smaller than predicting the mean of the masked patches. Either way
    the outputs at masked positions carry no information about what was masked.
    """

    masked: int
    check_after: int
    nce_ema: float | None = None
    acc_ema: float | None = None
    mse_ema: float | None = None
    mean_patch_mse_ema: float | None = None
    last_eval: dict | None = None
    warned: set[str] = field(default_factory=set)

    @property
    def chance_nce(self) -> float:
        return math.log(self.masked)

    def update(self, step: int, losses: dict[str, float]) -> str | None:
        """Feed one step's pretext losses; a warning the first time they look collapsed."""
        a = 2.0 / (EMA_STEPS + 1)
        for key in ("nce", "acc", "mse", "mean_patch_mse"):
            value = losses.get(key)
            if value is None or not math.isfinite(value):
                continue
            old = getattr(self, f"{key}_ema")
            setattr(self, f"{key}_ema", value if old is None else (1 - a) * old + a * value)
        reasons = self.reasons()
        if step >= self.check_after and reasons and "pretext" not in self.warned:
            self.warned.add("pretext")
            return (f"step {step}: {' and '.join(reasons)}: so far the encoder has learned nothing about the masked "
                    f"patches (lower optim.lr or lengthen optim.warmup_steps if it stays)")
        return None

    def reasons(self) -> list[str]:
        out = []
        if self.acc_ema is not None and self.nce_ema is not None and self.acc_ema <= 2.0 / self.masked \
                and self.nce_ema >= PRIOR_SHARE * self.chance_nce:
            out.append(f"InfoNCE {self.nce_ema:.3f} at chance (log {self.masked} = {self.chance_nce:.3f}, accuracy "
                       f"{self.acc_ema:.3f})")
        if self.mse_ema is not None and self.mean_patch_mse_ema is not None \
                and self.mse_ema >= PRIOR_SHARE * self.mean_patch_mse_ema:
            out.append(f"reconstruction MSE {self.mse_ema:.4f} no better than the mean patch's "
                       f"{self.mean_patch_mse_ema:.4f}")
        return out

    def state_dict(self) -> dict:
        return {"nce_ema": self.nce_ema, "acc_ema": self.acc_ema, "mse_ema": self.mse_ema,
                "mean_patch_mse_ema": self.mean_patch_mse_ema, "last_eval": self.last_eval,
                "warned": sorted(self.warned)}

    def load_state_dict(self, state: dict) -> None:
        for key in ("nce_ema", "acc_ema", "mse_ema", "mean_patch_mse_ema", "last_eval"):
            setattr(self, key, state.get(key))
        self.warned = set(state.get("warned", ()))

    def report(self) -> dict:
        reasons = self.reasons()
        return {"collapsed": bool(reasons), "reasons": reasons, "masked_patches": self.masked,
                "chance_nce": round(self.chance_nce, 6), "final_train_nce": self.nce_ema,
                "final_train_acc": self.acc_ema, "final_train_mse": self.mse_ema,
                "mean_patch_mse": self.mean_patch_mse_ema, "final_eval": self.last_eval}
