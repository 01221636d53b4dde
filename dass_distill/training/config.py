"""Training configuration: a YAML file, validated up front, with ``key=value`` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dass_distill.errors import UserError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    train: Path
    eval: Path | None = None
    label_map: Path | None = Field(None, description="class_labels_indices.csv; default: beside the train manifest")
    target_length: int = Field(1024, gt=0, description="frames per clip (10 ms hop); 1024 ~ 10 s")
    num_workers: int = Field(2, ge=0)
    memoize_features: bool = Field(False, description="keep computed fbanks in RAM (small datasets only)")
    balanced_sampling: bool = Field(
        False, description="draw clips with replacement, weight = sum over labels of 1000 / (label count + 0.01) (AST/DASS)")


class DistillConfig(_Section):
    cache: Path | None = Field(None, description="HDF5 logit cache; none = labels only")
    teacher: str | list[str] | None = Field(
        None, description="a teacher or ensemble in the cache, or a list of cached teachers to combine; "
                          "default: the cache's only teacher or only ensemble")
    combine: Literal["prob_mean", "logit_mean"] | None = Field(
        None, description="how ensemble members are combined; default: the ensemble's own choice, else prob_mean")
    member_weights: dict[str, float] | None = Field(None, description="per-member weights (normalised); default equal")
    kd_weight: float = Field(0.5, ge=0.0, le=1.0, description="w in (1 - w) * label BCE + w * KD; 0 = labels only")
    temperature: float = Field(1.0, gt=0.0, description="T, applied to the teacher logits only (as DASS)")
    kd_loss: Literal["kl_softmax", "bce_sigmoid"] = Field(
        "kl_softmax", description="KD term: KL(softmax(t/T) || softmax(s)) (DASS), or per-class "
                                  "BCE(s, sigmoid(t/T)) (EfficientAT / CED)")
    t2_scaling: bool = Field(False, description="multiply the KD term by T^2 (Hinton); DASS does not")
    labels: bool = Field(True, description="false: label-free distillation (CED), the loss is the KD term alone")
    missing: Literal["error", "skip", "labels_only"] = Field(
        "error", description="clips of the manifest absent from the cache: refuse, drop them, or train them on labels only"
    )

    @model_validator(mode="after")
    def _label_free_needs_teacher(self) -> "DistillConfig":
        if not self.labels:
            if self.kd_weight == 0:
                raise ValueError("labels=false (label-free distillation) trains on the teacher alone and needs "
                                 "kd_weight > 0 (its value is otherwise unused)")
            if self.cache is None:
                raise ValueError("labels=false (label-free distillation) needs teacher logits: set distill.cache")
            if self.missing == "labels_only":
                raise ValueError("labels=false (label-free distillation) cannot train clips missing from the cache "
                                 "on labels; set distill.missing=skip or distill.missing=error")
        return self


class AugmentConfig(_Section):
    freq_mask: int = Field(48, ge=0, description="SpecAugment frequency mask width limit (ignored with cached views)")
    time_mask: int = Field(192, ge=0, description="SpecAugment time mask width limit (ignored with cached views)")
    mixup: float = Field(0.0, ge=0.0, le=1.0, description="share of clips mixed with another (waveform mixup); "
                                                            "with cached views, the views' own mixup is used")
    mixup_alpha: float = Field(10.0, gt=0.0, description="mixup weight lambda ~ Beta(alpha, alpha)")
    time_shift: int = Field(0, ge=0, description="roll each clip's frames by up to this many (10 ms frames), "
                                                  "uniform in both directions (ignored with cached views)")


class OptimConfig(_Section):
    batch_size: int = Field(12, gt=0, description="clips per step per process (micro batch)")
    optimizer: Literal["adam", "adamw"] = Field(
        "adam", description="adam: L2 weight decay in the gradient (DASS); adamw: decoupled weight decay")
    schedule: Literal["epoch_decay", "cosine"] = Field(
        "epoch_decay", description="after warm-up: lr_decay once per epoch from lr_decay_start_epoch (DASS), "
                                   "or cosine to 0 over the run")
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = Field(5e-7, ge=0)
    warmup_steps: int = Field(1000, ge=0)
    epochs: int = Field(5, gt=0)
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps")
    lr_decay_start_epoch: int = Field(2, ge=1, description="first epoch whose lr is multiplied by lr_decay")
    lr_decay: float = Field(0.5, gt=0, le=1)
    max_nonfinite: int = Field(20, ge=0, description="stop after this many steps with a NaN/inf loss (each is skipped)")


class DeepSpeedSection(_Section):
    zero_stage: Literal[0, 1, 2, 3] = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_accumulation_steps: int = Field(1, gt=0)
    gradient_clipping: float = Field(0.0, ge=0)
    config: dict[str, Any] = Field(default_factory=dict, description="extra DeepSpeed config keys, merged last")


class WeightAveragingConfig(_Section):
    enabled: bool = Field(False, description="average the weights of the epoch-end checkpoints (DASS)")
    start_epoch: int = Field(1, ge=1, description="first epoch whose weights enter the average")


class _RunConfig(_Section):
    """What every training-like run has: a model, a seed, a run folder, the optimizer, DeepSpeed
    and how often it logs, evaluates and saves."""

    model: str = "dass_small"
    model_args: dict[str, Any] = Field(default_factory=dict)
    output_dir: Path = Path("runs/train")
    seed: int = 0
    optim: OptimConfig = Field(default_factory=OptimConfig)
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    eval_every: int | None = Field(None, gt=0, description="steps between evaluations; default once per epoch")
    save_every: int | None = Field(None, gt=0, description="steps between checkpoints; default once per epoch")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, gt=0)

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        from dass_distill.models import model_names

        if v not in model_names():
            raise ValueError(f"unknown model '{v}'; known: {', '.join(model_names())}")
        return v


class TrainConfig(_RunConfig):
    pretrained: Path | None = Field(
        None, description="initial weights: a training or pretraining run folder, or a released checkpoint file "
                          "(DASS / VMamba ImageNet, AuM, SSAMBA fine-tuned or self-supervised)"
    )
    head_bias: Literal["prior", "zero"] = Field(
        "prior", description="initial output bias of a new head: the logit of each class's training frequency "
                             "(prior), or 0 (probability 0.5, as timm/DASS); see training/label_prior.py")
    data: DataConfig
    distill: DistillConfig = Field(default_factory=DistillConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    weight_averaging: WeightAveragingConfig = Field(default_factory=WeightAveragingConfig)

    @model_validator(mode="after")
    def _files_exist(self) -> "TrainConfig":
        for label, p in (("data.train", self.data.train), ("data.eval", self.data.eval),
                         ("data.label_map", self.data.label_map), ("distill.cache", self.distill.cache),
                         ("pretrained", self.pretrained)):
            if p is not None and not p.exists():
                raise ValueError(f"{label}: {p} does not exist")
        return self


class PretrainDataConfig(_Section):
    train: Path = Field(description="audio to pretrain on: a manifest (labels ignored), a .txt list of audio "
                                    "files (one per line) or a folder of audio files")
    eval: Path | None = Field(None, description="held-out audio (same forms) for the pretext losses")
    target_length: int = Field(1024, gt=0, description="frames per clip (10 ms hop); 1024 ~ 10 s")
    num_workers: int = Field(2, ge=0)
    memoize_features: bool = Field(False, description="keep computed fbanks in RAM (small datasets only)")


class MaskingConfig(_Section):
    mask_patches: int | None = Field(None, ge=2, description="patches masked per clip (SSAMBA's mask_patch, 300 "
                                                             "of 512 in its scripts); default: mask_ratio")
    mask_ratio: float = Field(0.6, gt=0.0, lt=1.0, description="share of the patches masked when mask_patches "
                                                                "is not set")
    cluster: bool = Field(True, description="mask squares of 3x3 to 5x5 patches (SSAST); false: single patches")
    objective: Literal["joint", "nce", "mse"] = Field(
        "joint", description="joint: InfoNCE and reconstruction, one encoder pass each with its own mask (SSAMBA)")
    nce_weight: float = Field(1.0, ge=0.0)
    mse_weight: float = Field(10.0, ge=0.0)

    def count(self, patches: int) -> int:
        """Patches to mask in a clip of ``patches``."""
        return self.mask_patches if self.mask_patches is not None else max(2, round(self.mask_ratio * patches))


class PretrainConfig(_RunConfig):
    """``dass-distill pretrain``: self-supervised masked-patch pretraining of a patch-token student."""

    model: str = "ssamba_tiny"
    output_dir: Path = Path("runs/pretrain")
    data: PretrainDataConfig
    masking: MaskingConfig = Field(default_factory=MaskingConfig)

    @model_validator(mode="after")
    def _files_exist(self) -> "PretrainConfig":
        for label, p in (("data.train", self.data.train), ("data.eval", self.data.eval)):
            if p is not None and not p.exists():
                raise ValueError(f"{label}: {p} does not exist")
        return self


#: Config keys that name files, made absolute after validation (relative ones in a file are
#: relative to the file).
PATH_KEYS = ("data.train", "data.eval", "data.label_map", "distill.cache", "pretrained")


def apply_override(doc: dict, item: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML (numbers, lists, null)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise UserError(f"override '{item}' should look like key=value (e.g. optim.lr=3e-4)")
    node = doc
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UserError(f"override '{item}': '{p}' is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def load_config(path: str | Path | None, overrides: list[str] = (), schema: type[BaseModel] = TrainConfig):
    """Read, override and validate a training (or, with ``schema=PretrainConfig``, pretraining)
    config; one-line errors for every problem."""
    doc: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config {path} not found")
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"config {path} is not valid YAML: {e}") from None
        if not isinstance(doc, dict):
            raise UserError(f"config {path} must be a mapping of keys to values")
        # Paths written in the file are relative to the file; those given as overrides, to the cwd.
        _with_base(doc, path.parent)
    for item in overrides:
        apply_override(doc, item)
    source = str(path) if path is not None else "command line"
    try:
        cfg = schema.model_validate(doc)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            key = "data.train=MANIFEST" if where == "data" else f"{where}=..."
            msg = f"required; set it in the config file or pass {key} on the command line"
        raise UserError(f"{source}: {where}: {msg}") from None
    # The resolved config written beside the checkpoints must not depend on the cwd.
    for key in PATH_KEYS:
        *sections, name = key.split(".")
        node = cfg
        for section in sections:
            node = getattr(node, section, None)
        value = getattr(node, name, None)
        if isinstance(value, Path):
            setattr(node, name, value.absolute())
    return cfg


def _with_base(doc: dict, base: Path) -> dict:
    """Rewrite relative file paths of a raw config against ``base`` before validation."""
    def fix(section: dict | None, key: str) -> None:
        if isinstance(section, dict) and isinstance(section.get(key), str) and not Path(section[key]).is_absolute():
            section[key] = str(base / section[key])
    data, distill = doc.get("data"), doc.get("distill")
    for k in ("train", "eval", "label_map"):
        fix(data, k)
    fix(distill, "cache")
    fix(doc, "pretrained")
    return doc


def dump_config(cfg: BaseModel, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


#: Keys a resumed run may change: how long it runs, how often it reports and saves, and how
#: many loader processes it uses. Anything else changes the run that the checkpoints belong to.
RESUME_MAY_CHANGE = ("optim.epochs", "optim.max_steps", "eval_every", "save_every", "log_every",
                     "keep_checkpoints", "data.num_workers")


def _flatten(doc: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in doc.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_changes(saved: dict, cfg: BaseModel) -> list[tuple[str, object, object]]:
    """(key, saved value, new value) for every key that differs and may not change on resume."""
    old, new = _flatten(saved), _flatten(cfg.model_dump(mode="json"))
    keys = sorted(set(old) | set(new))
    return [(k, old.get(k), new.get(k)) for k in keys
            if old.get(k) != new.get(k) and k not in RESUME_MAY_CHANGE]


def check_resume_config(run_dir: Path, cfg: BaseModel) -> None:
    """Refuse to continue a run folder's checkpoints under a different config."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise UserError(f"{path} is not valid YAML; restore it or choose another output_dir") from None
    changes = config_changes(saved, cfg)
    if changes:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes[:6]) + (" ..." if len(changes) > 6 else "")
        raise UserError(f"{run_dir} holds checkpoints of a run with another config ({shown}); rerun with the same "
                        f"config to resume, or choose another output_dir (a resume may change only "
                        f"{', '.join(RESUME_MAY_CHANGE)})")
