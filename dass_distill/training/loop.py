"""The training loop: labels (+ cached teacher logits) -> DeepSpeed engine -> checkpoints.

Read top to bottom: set-up, resume, the step loop, evaluation and checkpointing.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from rich.markup import escape
from rich.panel import Panel
from rich.progress import TextColumn
from rich.text import Text
from torch.utils.data import DataLoader

from dass_distill.console import console, make_progress
from dass_distill.data.augment import SpecAugment, TimeShift
from dass_distill.data.dataset import ClipDataset, collate
from dass_distill.data.manifest import LabelMap, default_label_map_path, load_manifest
from dass_distill.errors import UserError
from dass_distill.evaluation import per_class_records, score_batches
from dass_distill.losses import DistillationLoss
from dass_distill.models import build_model
from dass_distill.training.checkpoint import CHECKPOINTS, MODEL_INFO, ModelInfo, consolidated_state_dict, resolve_checkpoint
from dass_distill.training.config import TrainConfig, check_resume_config, dump_config
from dass_distill.training.distributed import init_distributed, rank, world_size
from dass_distill.training.health import CollapseMonitor, FeatureSpread, late_start_advice, likely_causes
from dass_distill.training.label_prior import chance_map, label_prior, prior_bce, prior_logits
from dass_distill.training.metrics_log import MetricsLog
from dass_distill.training.sampler import ResumableSampler, balanced_weights
from dass_distill.training.schedule import cosine_factor, lr_factor
from dass_distill.training.teacher_targets import cached_views, open_teacher_targets, teacher_summary
from dass_distill.training.weight_averaging import gathered_state_dict, load_average, running_mean, save_average

#: Mixed precision runs under DeepSpeed's torch_autocast: parameters, master weights and
#: optimizer state stay fp32 (so the SSM constants A_logs, Ds and dt_projs_bias are never
#: rounded), and only the Linear/Conv compute and their gradient communication go to 16 bits.
AUTOCAST_DTYPE = {"bf16": "bfloat16", "fp16": "float16"}


@dataclass
class TrainState:
    """Where training is; saved in every checkpoint so a resumed run continues exactly."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs completed
    batches_in_epoch: int = 0  # micro-batches of this epoch already consumed
    best_map: float = -1.0
    best_step: int = -1
    skipped_clips: int = 0
    nonfinite_losses: int = 0
    averaged_epochs: list[int] = field(default_factory=list)  # epochs whose end weights are in the average


def deepspeed_config(cfg: TrainConfig) -> dict:
    """DeepSpeed's own config dict, from the ``deepspeed`` section (extra keys merged last)."""
    ds = cfg.deepspeed
    if ds.precision == "fp16" and not torch.cuda.is_available():
        raise UserError("deepspeed.precision=fp16 needs a GPU; use bf16 or fp32 on CPU")
    out = {
        "train_micro_batch_size_per_gpu": cfg.optim.batch_size,
        "gradient_accumulation_steps": ds.gradient_accumulation_steps,
        "gradient_clipping": ds.gradient_clipping,
        "zero_optimization": {"stage": ds.zero_stage},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if ds.precision in AUTOCAST_DTYPE:
        out["torch_autocast"] = {"enabled": True, "dtype": AUTOCAST_DTYPE[ds.precision]}
    out.update(ds.config)
    return out


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms and the SSM constants (A_logs, D, dt bias)."""
    skip = set(module.no_weight_decay()) if hasattr(module, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    """One training run, resumable from its own checkpoints."""

    verb = "train"  # in the progress bar

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.ckpt_dir = self.out / CHECKPOINTS

    # ---------------------------------------------------------------- set-up
    def start_processes(self) -> None:
        """Check a resumed run's config, join the process group, seed every generator."""
        cfg = self.cfg
        if (self.ckpt_dir / "latest").is_file():  # a resume: the checkpoints must belong to this config
            check_resume_config(self.out, cfg)
        init_distributed()
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self.is_main = rank() == 0
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)

    def build_engine(self, module: torch.nn.Module) -> None:
        """Steps per epoch and in all, the optimizer, the lr schedule and the DeepSpeed engine around ``module``."""
        import deepspeed

        cfg, o = self.cfg, self.cfg.optim
        ga = cfg.deepspeed.gradient_accumulation_steps
        self.steps_per_epoch = max(1, len(self.sampler) // o.batch_size // ga)
        self.total_steps = o.epochs * self.steps_per_epoch
        if o.max_steps is not None:
            self.total_steps = min(self.total_steps, o.max_steps)
        opt_class = torch.optim.Adam if o.optimizer == "adam" else torch.optim.AdamW
        optimizer = opt_class(param_groups(module, o.weight_decay), lr=o.lr, betas=o.betas)
        if o.schedule == "cosine":
            schedule = partial(cosine_factor, total_steps=self.total_steps, warmup_steps=o.warmup_steps)
        else:
            schedule = partial(lr_factor, steps_per_epoch=self.steps_per_epoch, warmup_steps=o.warmup_steps,
                               decay_start_epoch=o.lr_decay_start_epoch, decay=o.lr_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg))
        self.dtype = torch.float32  # inputs; DeepSpeed's autocast lowers the compute

    def setup(self) -> None:
        cfg = self.cfg
        self.start_processes()
        label_map = LabelMap.from_csv(cfg.data.label_map or default_label_map_path(cfg.data.train))
        train_manifest = load_manifest(cfg.data.train, label_map)
        self.eval_manifest = load_manifest(cfg.data.eval, label_map) if cfg.data.eval else None
        self.model = build_model(cfg.model, label_map, cfg.data.target_length, **cfg.model_args)
        self.info = ModelInfo(cfg.model, self.model.family.name, cfg.data.target_length, label_map, cfg.model_args)
        self.fresh_head = True
        if cfg.pretrained is not None:
            self._load_pretrained(cfg.pretrained)
        if cfg.optim.optimizer == "adam" and cfg.optim.weight_decay >= 1e-3 and self.is_main:
            console.print(f"[yellow]optim.weight_decay={cfg.optim.weight_decay:g} with Adam is L2 inside the "
                          f"normalised step and can shrink the weights to 0; optim.optimizer=adamw decouples it")

        teacher, labels_only = None, set()
        self.cache_gap: dict | None = None
        if cfg.distill.cache is not None:
            before = len(train_manifest)
            teacher, train_manifest, labels_only = open_teacher_targets(cfg, train_manifest, label_map)
            self.cache_gap = {"policy": cfg.distill.missing, "skipped": before - len(train_manifest),
                              "labels_only": len(labels_only)}
        elif cfg.distill.kd_weight > 0 and self.is_main:
            console.print("[dim]no distill.cache: training on labels only")
        self.distilling = teacher is not None and cfg.distill.kd_weight > 0
        self.teacher_provenance = teacher_summary(teacher) if teacher is not None else None

        self.views = cached_views(cfg, teacher, self.model) if teacher is not None else None
        dataset = ClipDataset(train_manifest, self.model.featurize, self.model.sample_rate, teacher,
                              labels_only, memoize=cfg.data.memoize_features, views=self.views)
        weights = balanced_weights(train_manifest.targets()) if cfg.data.balanced_sampling else None
        prior = label_prior(train_manifest.targets(), weights)  # as the sampler draws the clips
        if self.fresh_head and cfg.head_bias == "prior":
            with torch.no_grad():
                head = self.model.module.get_classifier()
                head.bias.copy_(torch.as_tensor(prior_logits(prior), dtype=head.bias.dtype))
        eval_chance = chance_map(self.eval_manifest.targets()) if self.eval_manifest is not None else None
        mixup = 0.0 if self.views is not None else cfg.augment.mixup  # views carry their own mixup
        self.sampler = ResumableSampler(len(dataset), cfg.seed, rank(), world_size(),
                                        views=self.views.count if self.views else None, weights=weights,
                                        mixup=mixup, mixup_alpha=cfg.augment.mixup_alpha)
        self.loader = DataLoader(dataset, batch_size=cfg.optim.batch_size, sampler=self.sampler, collate_fn=collate,
                                 num_workers=cfg.data.num_workers, persistent_workers=cfg.data.num_workers > 0,
                                 drop_last=True, generator=torch.Generator().manual_seed(cfg.seed))
        # (Its own generator: creating an iterator must not draw from the global RNG, which
        # the checkpoint restores for augmentation and drop-path; else resume drifts.)
        self.eval_dataset = None
        if self.eval_manifest is not None:
            self.eval_dataset = ClipDataset(self.eval_manifest, self.model.featurize, self.model.sample_rate,
                                            memoize=cfg.data.memoize_features)
        self.build_engine(self.model.module)
        o = cfg.optim
        self.loss_fn = DistillationLoss.from_config(cfg.distill, self.distilling)
        # Cached views carry their own masks and shifts (the ones the teacher saw): none added here.
        self.augment = (torch.nn.Sequential(TimeShift(cfg.augment.time_shift),
                                            SpecAugment(cfg.augment.freq_mask, cfg.augment.time_mask))
                        if self.views is None else torch.nn.Identity())
        self.state = TrainState()
        self.monitor = CollapseMonitor(prior_bce(prior), eval_chance,
                                       check_after=min(self.total_steps, o.warmup_steps + max(200, self.total_steps // 4)))

        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.out / "config.yaml")
            self.info.save(self.out)

    def _load_pretrained(self, path: Path) -> None:
        """From a training run folder (any model), or from a released checkpoint of the model's family."""
        if path.is_dir() and ((path / MODEL_INFO).is_file() or CHECKPOINTS in (path.name, path.parent.name)):
            run_dir, ckpt_dir, tag = resolve_checkpoint(path)
            state = consolidated_state_dict(ckpt_dir, tag)
            source = ModelInfo.load(run_dir) if (run_dir / MODEL_INFO).is_file() else None
            if source is not None and source.task == "pretrain":
                self._load_pretraining_run(source, state, run_dir, tag)
                return
            # A new label set keeps the backbone and re-initialises the head.
            own = self.model.module.state_dict()
            fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
            self.model.module.load_state_dict(fitting, strict=False)
            head_bias = self.model.module.get_classifier().bias
            self.fresh_head = not any(p is head_bias and n in fitting for n, p in self.model.module.named_parameters())
            what = f"{len(fitting)}/{len(own)} tensors from {run_dir} ({tag})"
        else:
            family = self.model.family
            if family.init_from_released is None:
                raise UserError(f"pretrained={path}: {family.name} models start from a training run folder (there is "
                                f"no released {family.name} checkpoint format)")
            head_loaded = family.init_from_released(self.model.module, path, list(self.info.label_map.ids))
            self.fresh_head = not head_loaded
            what = f"{path} ({'all weights' if head_loaded else 'a new head for this label set'})"
        if self.is_main:
            console.print(f"initialised {escape(self.cfg.model)} from {escape(what)}")

    def _load_pretraining_run(self, source: ModelInfo, state: dict, run_dir: Path, tag: str) -> None:
        """The encoder of a masked-patch pretraining run, adapted to this model's strides and length."""
        family = self.model.family
        if source.family != family.name or family.init_from_pretraining is None:
            raise UserError(f"pretrained={run_dir} is a pretraining run of {source.name} ({source.family} family); "
                            f"fine-tune a model of that family (--model {source.name})")
        family.init_from_pretraining(self.model.module, state, run_dir)
        if self.is_main:
            console.print(f"initialised {escape(self.cfg.model)} from the pretraining run {escape(str(run_dir))} "
                          f"({tag}; positions fitted, a new head)")

    # ---------------------------------------------------------------- resume
    def maybe_resume(self) -> bool:
        latest = self.ckpt_dir / "latest"
        if not latest.is_file():
            return False
        _, client = self.engine.load_checkpoint(str(self.ckpt_dir), tag=latest.read_text().strip())
        if client is None:
            raise UserError(f"could not resume from {self.ckpt_dir}; delete it or choose another output_dir")
        self.state = TrainState(**client["train_state"])
        self.monitor.load_state_dict(client.get("monitor") or {})
        torch.set_rng_state(client["rng"]["torch"])
        np.random.set_state(client["rng"]["numpy"])
        random.setstate(client["rng"]["python"])
        if self.is_main:
            console.print(f"resumed from step {self.state.step} (epoch {self.state.epoch + 1})")
        return True

    def save(self, tag: str, latest: bool = True) -> None:
        client = {
            "train_state": asdict(self.state),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "monitor": self.monitor.state_dict(),
        }
        self.engine.save_checkpoint(str(self.ckpt_dir), tag=tag, client_state=client, save_latest=latest)
        if latest and self.is_main:
            self._prune_checkpoints()

    def _prune_checkpoints(self) -> None:
        steps = sorted(p for p in self.ckpt_dir.glob("step_*") if p.is_dir())
        for old in steps[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    # ---------------------------------------------------------------- loop
    def train(self) -> dict:
        self.setup()
        resumed = self.maybe_resume()
        if not resumed:
            self.before_first_step()
        cfg, st = self.cfg, self.state
        eval_every = cfg.eval_every or self.steps_per_epoch
        save_every = cfg.save_every or self.steps_per_epoch
        log = MetricsLog(self.out) if self.is_main else None
        if log is not None and resumed:
            log.truncate_after(st.step)  # rows a killed run logged after its last checkpoint
        elif log is not None and self.cache_gap is not None:  # clips the cache lacks, counted once
            log.write(0, 0, "data", {"cache_missing_skipped": self.cache_gap["skipped"],
                                     "cache_missing_labels_only": self.cache_gap["labels_only"]})
        bs = cfg.optim.batch_size
        clips_seen, t_last = 0, time.perf_counter()
        metrics_text = TextColumn("{task.fields[info]}")
        with make_progress(metrics_text, disable=not self.is_main) as progress:
            task = progress.add_task(f"{self.verb} {cfg.model}", total=self.total_steps, completed=st.step, info="")
            while st.step < self.total_steps and st.epoch < cfg.optim.epochs:
                self.sampler.set_epoch(st.epoch, skip=st.batches_in_epoch * bs)
                self.engine.train()
                for batch in self.loader:
                    st.batches_in_epoch += 1
                    st.skipped_clips += len(batch.errors)
                    for clip_id, err in batch.errors:
                        console.print(f"[yellow]skipped {escape(clip_id)}: {escape(str(err))}")
                    if not len(batch):
                        continue
                    losses = self.train_micro_batch(batch)
                    clips_seen += len(batch)
                    if losses is None or self.engine.global_steps == st.step:
                        continue  # a skipped batch, or mid gradient accumulation: no optimizer step yet
                    st.step = self.engine.global_steps
                    progress.update(task, completed=st.step)
                    warning = self.watch(losses)
                    if warning and self.is_main:
                        progress.console.print(f"[yellow]{escape(warning)}")
                    if st.step % cfg.log_every == 0 or st.step == self.total_steps:
                        now = time.perf_counter()
                        rate = clips_seen * world_size() / (now - t_last)
                        clips_seen, t_last = 0, now
                        row = {k: float(v) for k, v in losses.items()}
                        row.update(lr=self.scheduler.get_last_lr()[0], clips_per_s=rate,
                                   skipped_clips=st.skipped_clips, nonfinite_losses=st.nonfinite_losses)
                        progress.update(task, info=f"loss {row['loss']:.4f} | {rate:.1f} clips/s")
                        if log:
                            log.write(st.step, st.epoch + 1, "train", row)
                    if st.step % eval_every == 0 or st.step == self.total_steps:
                        self.evaluate_and_keep_best(log, progress)
                        self.engine.train()
                    if st.step % save_every == 0 or st.step == self.total_steps:
                        self.save(f"step_{st.step:07d}")
                    if st.step >= self.total_steps:
                        if st.step == (st.epoch + 1) * self.steps_per_epoch:  # the last step ends an epoch
                            self.end_epoch()
                        break
                else:  # the epoch ran to its end
                    self.end_epoch()
        self.evaluate_average(log)
        if log:
            log.close()
        return self.finish()

    def compute_losses(self, batch) -> dict[str, torch.Tensor]:
        """The losses of one micro-batch (``loss`` is the one optimised)."""
        feats = self.augment(batch.features).to(self.engine.device, self.dtype)
        labels = batch.labels.to(self.engine.device)
        teacher = batch.teacher_logits.to(self.engine.device) if batch.teacher_logits is not None else None
        partner = batch.partner_logits.to(self.engine.device) if batch.partner_logits is not None else None
        lam = batch.lam.to(self.engine.device) if batch.lam is not None else None
        logits = self.engine(feats)
        return self.loss_fn(logits, labels, teacher, partner_logits=partner, lam=lam)

    def train_micro_batch(self, batch) -> dict | None:
        losses = self.compute_losses(batch)
        if not all_finite(losses["loss"]):  # every rank skips together, or the others would wait forever
            self.state.nonfinite_losses += 1
            limit = self.cfg.optim.max_nonfinite
            console.print(f"[yellow]non-finite loss at step {self.state.step}; batch skipped "
                          f"({self.state.nonfinite_losses} so far, limit {limit})")
            if self.state.nonfinite_losses > limit:
                raise UserError(f"{self.state.nonfinite_losses} batches gave a NaN/inf loss (optim.max_nonfinite="
                                f"{limit}); lower optim.lr, check the data and cache, or train in fp32")
            return None
        self.engine.backward(losses["loss"])
        self.engine.step()
        return {k: v.detach() for k, v in losses.items()}

    def watch(self, losses: dict) -> str | None:
        """Feed one step's losses to the collapse monitor; a warning the first time it sees one."""
        return self.monitor.update(self.state.step, float(losses["bce"]))

    # ---------------------------------------------------------------- evaluation
    def evaluate(self) -> dict | None:
        if self.eval_dataset is None:
            return None
        loader = DataLoader(self.eval_dataset, batch_size=self.cfg.optim.batch_size, collate_fn=collate,
                            num_workers=self.cfg.data.num_workers, generator=torch.Generator())
        self.engine.eval()
        with FeatureSpread(self.model.module.get_classifier()) as spread:
            scores = score_batches(self.engine, loader, self.engine.device, self.dtype)
        feature_spread = spread.value
        m = scores.metrics()
        if self.is_main:  # per-class AP/AUC of the latest evaluation, with label names
            lm = self.info.label_map
            doc = {"step": self.state.step, "mAP": m["mAP"], "mAUC": m["mAUC"], "d_prime": m["d_prime"],
                   "per_class": per_class_records(list(lm.ids), list(lm.names), m)}
            (self.out / "eval_per_class.json").write_text(json.dumps(doc, indent=1))
        result = {"mAP": m["mAP"], "mAUC": m["mAUC"], "d_prime": m["d_prime"], "eval_errors": len(scores.errors)}
        if feature_spread is not None:
            result["feature_spread"] = feature_spread
        return result

    def before_first_step(self) -> None:
        """Measure what the collapse monitor compares against later (a fresh run only)."""
        self.monitor.start_spread = self.start_feature_spread()

    @torch.no_grad()
    def start_feature_spread(self) -> float | None:
        """The spread of the head's inputs over one eval batch before training: the
        reference against which a collapse of the features is judged (health.py)."""
        if self.eval_dataset is None:
            return None
        loader = DataLoader(self.eval_dataset, batch_size=min(64, len(self.eval_dataset)), collate_fn=collate,
                            generator=torch.Generator())
        self.engine.eval()
        with FeatureSpread(self.model.module.get_classifier()) as spread:
            batch = next(iter(loader))
            if len(batch):
                self.engine(batch.features.to(self.engine.device, self.dtype))
        self.engine.train()
        return spread.value

    def evaluate_and_keep_best(self, log, progress) -> None:
        result = self.evaluate()
        if result is None:
            return
        st = self.state
        if log:
            log.write(st.step, st.epoch + 1, "eval", result)
        progress.console.print(f"step {st.step}: eval mAP {result['mAP']:.4f}  d' {result['d_prime']:.3f}")
        warning = self.monitor.evaluated(st.step, result["mAP"], result.get("feature_spread"))
        if warning and self.is_main:
            progress.console.print(f"[yellow]{escape(warning)}")
        if math.isfinite(result["mAP"]) and result["mAP"] > st.best_map:
            st.best_map, st.best_step = result["mAP"], st.step
            self.save("best", latest=False)

    def end_epoch(self) -> None:
        st = self.state
        st.epoch += 1
        st.batches_in_epoch = 0
        if self.average_epoch_weights():
            self.save(f"step_{st.step:07d}")  # the average and the state move together

    # ---------------------------------------------------------------- weight averaging
    def average_epoch_weights(self) -> bool:
        """Fold the weights at the end of the epoch just completed into the running average (DASS)."""
        wa, st = self.cfg.weight_averaging, self.state
        if not wa.enabled or st.epoch < wa.start_epoch or st.epoch in st.averaged_epochs:
            return False
        weights = gathered_state_dict(self.engine, keep=self.is_main)
        if self.is_main:
            previous = load_average(self.ckpt_dir, st.averaged_epochs)
            save_average(self.ckpt_dir, running_mean(previous, weights, len(st.averaged_epochs)),
                         st.averaged_epochs + [st.epoch])
        st.averaged_epochs.append(st.epoch)
        return True

    def evaluate_average(self, log) -> None:
        """Evaluate the weight-averaged model once at the end (main process)."""
        if not self.is_main or not self.state.averaged_epochs or self.eval_dataset is None:
            return
        model = self.info.build()
        model.module.load_state_dict(load_average(self.ckpt_dir, self.state.averaged_epochs))
        loader = DataLoader(self.eval_dataset, batch_size=self.cfg.optim.batch_size, collate_fn=collate,
                            num_workers=self.cfg.data.num_workers, generator=torch.Generator())
        model.module.to(self.engine.device).eval()
        m = score_batches(model.module, loader, self.engine.device, torch.float32).metrics()
        self.averaged_map = m["mAP"]
        if log is not None:
            log.write(self.state.step, self.state.epoch, "eval_averaged",
                      {"mAP": m["mAP"], "mAUC": m["mAUC"], "d_prime": m["d_prime"]})
        console.print(f"weight-averaged model (epochs {self.state.averaged_epochs}): eval mAP {m['mAP']:.4f}")

    def finish(self) -> dict:
        st = self.state
        summary = {
            "model": self.cfg.model,
            "steps": st.step,
            "epochs_completed": st.epoch,
            "best_mAP": st.best_map if st.best_step >= 0 else None,
            "best_step": st.best_step if st.best_step >= 0 else None,
            "skipped_clips": st.skipped_clips,
            "cache_missing": self.cache_gap,
            "nonfinite_losses": st.nonfinite_losses,
            "averaged_epochs": st.averaged_epochs,
            "processes": world_size(),
            "zero_stage": self.cfg.deepspeed.zero_stage,
            "averaged_mAP": getattr(self, "averaged_map", None),
            "distilled": self.distilling,
            "health": self.monitor.report(self.total_steps),
            "teacher": self.teacher_provenance,
            "output_dir": str(self.out),
        }
        if self.is_main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
            health = summary["health"]
            if health["collapsed"]:
                self.explain_collapse(health)
            elif health["left_prior_late"]:
                text = late_start_advice(health["last_step_at_prior"], self.total_steps, self.cfg.augment.freq_mask,
                                         self.views is not None)
                console.print(Panel(Text(text), title="late start", border_style="yellow"))
        return summary

    def explain_collapse(self, health: dict) -> None:
        """Tell the user the model is useless, and why it probably is."""
        o, cfg = self.cfg.optim, self.cfg
        causes = likely_causes(o.optimizer, o.lr, o.weight_decay, self.total_steps - o.warmup_steps, cfg.head_bias,
                               cfg.distill.kd_weight, self.distilling, warmup_steps=o.warmup_steps,
                               batch_size=o.batch_size * cfg.deepspeed.gradient_accumulation_steps * world_size(),
                               features_collapsed=self.monitor.features_collapsed)
        lines = [f"This run collapsed ({' and '.join(health['reasons'])}): training BCE "
                 f"{health['final_train_bce']}, label-prior BCE {health['prior_bce']}"
                 + (f", eval mAP {health['final_eval_mAP']:.4f} vs chance {health['chance_mAP']:.4f}"
                    if health["final_eval_mAP"] is not None and health["chance_mAP"] is not None else "")
                 + ". The model has not learned to use its input. Likely causes:"]
        lines += [f"  - {c}" for c in causes]
        console.print(Panel(Text("\n".join(lines)), title="collapsed run", border_style="red"))


def all_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank."""
    ok = torch.isfinite(loss.detach()).float().reshape(1)
    if world_size() > 1:
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
    return bool(ok.item() > 0)


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training as configured; returns the run summary."""
    return Trainer(cfg).train()
