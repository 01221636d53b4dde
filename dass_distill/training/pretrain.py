"""Self-supervised masked-patch pretraining (``dass-distill pretrain``) on the training machinery.

The same DeepSpeed engine (ZeRO, precision, accumulation), resumable sampler, checkpoints
(exact resume after kill -9), metrics log and progress as ``train``. What differs: there are
no labels (a manifest's are ignored; a list or folder of audio is enough), the model is the
student inside the SSAST pretext heads (:mod:`dass_distill.students.masked_patches`), the
loss is theirs, evaluation reports the pretext losses on held-out audio under fixed masks,
and the collapse monitor watches the InfoNCE accuracy and the reconstruction error.

The run folder is a training run folder (``model.json`` says ``"task": "pretrain"``); give it
to ``train pretrained=RUN`` to fine-tune (``Trainer._load_pretrained``).
"""

from __future__ import annotations

import json

import torch
from rich.markup import escape
from torch.utils.data import DataLoader

from dass_distill.console import console
from dass_distill.data.dataset import ClipDataset, collate
from dass_distill.data.manifest import LabelMap, load_audio_list
from dass_distill.errors import UserError
from dass_distill.models import build_model
from dass_distill.registry import family_of, model_config
from dass_distill.students.masked_patches import MaskedPatchPretraining, patch_layout
from dass_distill.training.checkpoint import ModelInfo
from dass_distill.training.config import PretrainConfig, dump_config
from dass_distill.training.distributed import rank, world_size
from dass_distill.training.health import PretextMonitor
from dass_distill.training.loop import Trainer, TrainState
from dass_distill.training.sampler import ResumableSampler


def build_pretraining_model(cfg: PretrainConfig):
    """The student named in ``cfg`` (patches at stride = patch size unless set) inside the pretext
    heads; returns (TrainableModel of the student, the pretraining module, its model_args)."""
    args = dict(cfg.model_args)
    family = family_of(cfg.model)
    if family.init_from_pretraining is None:
        raise UserError(f"pretrain works for the patch-token models (aum_*, ssamba_*, ast_*); {cfg.model} is a "
                        f"{family.name} model")
    patch = model_config(cfg.model, 0, cfg.data.target_length, **args).patch_size
    # Pretraining cuts patches that do not overlap (SSAST / SSAMBA: stride 16, fine-tuning 10).
    for key in family.stride_options:
        args.setdefault(key, patch)
    # One dummy class: the classifier is dropped by the pretext wrapper (a 0-wide one warns at init).
    model = build_model(cfg.model, LabelMap(("unused",), ("unused",)), cfg.data.target_length, **args)
    grid = patch_layout(model.module).grid()
    try:
        module = MaskedPatchPretraining(model.module, cfg.masking.count(grid[0] * grid[1]), cfg.masking.cluster,
                                        cfg.masking.objective, cfg.masking.nce_weight, cfg.masking.mse_weight)
    except ValueError as e:
        raise UserError(f"{cfg.model}: {e}") from None
    return model, module, args


class Pretrainer(Trainer):
    """One pretraining run, resumable from its own checkpoints."""

    cfg: PretrainConfig
    verb = "pretrain"

    def setup(self) -> None:
        cfg = self.cfg
        self.start_processes()
        train_audio = load_audio_list(cfg.data.train)
        eval_audio = load_audio_list(cfg.data.eval) if cfg.data.eval else None
        self.model, module, args = build_pretraining_model(cfg)
        self.pretext = module
        self.info = ModelInfo(cfg.model, self.model.family.name, cfg.data.target_length, train_audio.label_map, args,
                              task="pretrain")
        featurize, sr = self.model.featurize, self.model.sample_rate
        dataset = ClipDataset(train_audio, featurize, sr, memoize=cfg.data.memoize_features)
        self.eval_dataset = (ClipDataset(eval_audio, featurize, sr, memoize=cfg.data.memoize_features)
                             if eval_audio is not None else None)
        self.sampler = ResumableSampler(len(dataset), cfg.seed, rank(), world_size())
        self.loader = DataLoader(dataset, batch_size=cfg.optim.batch_size, sampler=self.sampler, collate_fn=collate,
                                 num_workers=cfg.data.num_workers, persistent_workers=cfg.data.num_workers > 0,
                                 drop_last=True, generator=torch.Generator().manual_seed(cfg.seed))
        if len(self.sampler) < cfg.optim.batch_size:
            raise UserError(f"{cfg.data.train} has {len(dataset)} clips, fewer than one batch "
                            f"(optim.batch_size={cfg.optim.batch_size})")
        self.build_engine(module)
        self.cache_gap = None  # no teacher cache
        self.state = TrainState()
        check_after = min(self.total_steps, cfg.optim.warmup_steps + max(200, self.total_steps // 4))
        self.monitor = PretextMonitor(module.mask_patches, check_after=check_after)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.out / "config.yaml")
            self.info.save(self.out)
            console.print(f"pretraining {escape(cfg.model)} on {len(dataset)} clips: {module.mask_patches} of "
                          f"{module.grid[0] * module.grid[1]} patches masked ({cfg.masking.objective} objective)")

    def compute_losses(self, batch) -> dict[str, torch.Tensor]:
        return self.engine(batch.features.to(self.engine.device, self.dtype))

    def watch(self, losses: dict) -> str | None:
        return self.monitor.update(self.state.step, {k: float(v) for k, v in losses.items()})

    def before_first_step(self) -> None:
        pass

    def average_epoch_weights(self) -> bool:
        return False

    @torch.no_grad()
    def evaluate(self) -> dict | None:
        """The pretext losses on the held-out audio, under the same masks at every evaluation."""
        if self.eval_dataset is None:
            return None
        loader = DataLoader(self.eval_dataset, batch_size=self.cfg.optim.batch_size, collate_fn=collate,
                            num_workers=self.cfg.data.num_workers, generator=torch.Generator())
        masks = torch.Generator().manual_seed(self.cfg.seed)
        passes = 2 if self.pretext.objective == "joint" else 1
        self.engine.eval()
        totals: dict[str, float] = {}
        clips = errors = 0
        for batch in loader:
            errors += len(batch.errors)
            if not len(batch):
                continue
            feats = batch.features.to(self.engine.device, self.dtype)
            drawn = tuple(self.pretext.draw_masks(len(batch), self.pretext.grid, masks).to(feats.device)
                          for _ in range(passes))
            for key, value in self.engine(feats, masks=drawn).items():
                totals[key] = totals.get(key, 0.0) + float(value) * len(batch)
            clips += len(batch)
        if not clips:
            return None
        return {**{k: v / clips for k, v in totals.items()}, "eval_errors": errors}

    def evaluate_and_keep_best(self, log, progress) -> None:
        result = self.evaluate()
        if result is None:
            return
        st = self.state
        self.monitor.last_eval = result
        if log:
            log.write(st.step, st.epoch + 1, "eval", result)
        shown = [f"loss {result['loss']:.4f}"]
        if "nce" in result:
            shown.append(f"InfoNCE {result['nce']:.3f} (accuracy {result['acc']:.3f})")
        if "mse" in result:
            shown.append(f"MSE {result['mse']:.4f} (mean patch {result['mean_patch_mse']:.4f})")
        progress.console.print(f"step {st.step}: eval " + ", ".join(shown))

    def finish(self) -> dict:
        st = self.state
        summary = {
            "task": "pretrain",
            "model": self.cfg.model,
            "steps": st.step,
            "epochs_completed": st.epoch,
            "masked_patches": self.pretext.mask_patches,
            "patches": self.pretext.grid[0] * self.pretext.grid[1],
            "objective": self.pretext.objective,
            "skipped_clips": st.skipped_clips,
            "nonfinite_losses": st.nonfinite_losses,
            "processes": world_size(),
            "zero_stage": self.cfg.deepspeed.zero_stage,
            "health": self.monitor.report(),
            "output_dir": str(self.out),
        }
        if self.is_main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
            if summary["health"]["collapsed"]:
                console.print(f"[red]this pretraining run collapsed: {escape('; '.join(summary['health']['reasons']))}")
            console.print(f"fine-tune it: dass-distill train --model {escape(self.cfg.model)} "
                          f"pretrained={escape(str(self.out))} data.train=...")
        return summary


def pretrain(cfg: PretrainConfig) -> dict:
    """Run (or resume) masked-patch pretraining as configured; returns the run summary."""
    return Pretrainer(cfg).train()
