"""The run folder written by ``dass-distill train`` and reading weights back out of it.

    RUN/config.yaml            resolved training config
    RUN/model.json             model name, family, front-end length, label map, overrides
    RUN/checkpoints/<tag>/     DeepSpeed checkpoints (tags step_XXXXXXX and best)
    RUN/checkpoints/latest     DeepSpeed's pointer to the newest step checkpoint
    RUN/checkpoints/averaged/  running mean of epoch-end weights (weight_averaging), fp32;
                               epochs.json names the current file
    RUN/metrics.csv            one row per log/eval event
    RUN/summary.json           final and best evaluation results
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dass_distill.checkpoint_files import CheckpointError
from dass_distill.data.manifest import LabelMap
from dass_distill.errors import UserError
from dass_distill.models import TrainableModel, build_model

MODEL_INFO = "model.json"
CHECKPOINTS = "checkpoints"
AVERAGED = "averaged"


@dataclass
class ModelInfo:
    name: str
    family: str
    target_length: int
    label_map: LabelMap
    model_args: dict
    task: str = "train"  # "pretrain": a masked-patch pretraining run (no classifier)

    def save(self, run_dir: Path) -> None:
        doc = {
            "name": self.name,
            "family": self.family,
            "target_length": self.target_length,
            "label_map": self.label_map.to_dict(),
            "model_args": self.model_args,
            "task": self.task,
        }
        (run_dir / MODEL_INFO).write_text(json.dumps(doc, indent=2))

    @classmethod
    def load(cls, run_dir: Path) -> "ModelInfo":
        path = run_dir / MODEL_INFO
        if not path.is_file():
            raise UserError(f"{run_dir} is not a dass-distill training run (no {MODEL_INFO}); pass the train output_dir")
        d = json.loads(path.read_text())
        return cls(d["name"], d["family"], d["target_length"], LabelMap.from_dict(d["label_map"]), d["model_args"],
                   d.get("task", "train"))

    def build(self) -> TrainableModel:
        return build_model(self.name, self.label_map, self.target_length, **self.model_args)


def resolve_checkpoint(path: Path, tag: str | None = None) -> tuple[Path, Path, str]:
    """From a run folder, its checkpoints folder or one tag folder: (run dir, checkpoints dir, tag).

    Without ``tag`` the ``best`` checkpoint is preferred, then DeepSpeed's ``latest``.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} not found")
    if (path / MODEL_INFO).is_file():
        run_dir, ckpt_dir = path, path / CHECKPOINTS
    elif path.name == CHECKPOINTS:
        run_dir, ckpt_dir = path.parent, path
    elif path.parent.name == CHECKPOINTS:
        run_dir, ckpt_dir, tag = path.parent.parent, path.parent, tag or path.name
    else:
        raise UserError(f"{path} is neither a training run folder nor one of its checkpoints")
    if tag is None:
        if (ckpt_dir / "best").is_dir():
            tag = "best"
        elif (ckpt_dir / "latest").is_file():
            tag = (ckpt_dir / "latest").read_text().strip()
        else:
            raise UserError(f"{run_dir} has no checkpoint yet; train longer or check output_dir")
    if not (ckpt_dir / tag).is_dir():
        raise UserError(f"checkpoint tag '{tag}' not found in {ckpt_dir}")
    return run_dir, ckpt_dir, tag


def consolidated_state_dict(ckpt_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """fp32 module weights from a DeepSpeed checkpoint of any ZeRO stage, or the weight average (tag ``averaged``)."""
    if tag == AVERAGED:
        return _averaged(ckpt_dir / AVERAGED)
    states = _model_states(ckpt_dir / tag)
    stage = int((states.get("ds_config") or {}).get("zero_optimization", {}).get("stage", 0))
    if stage > 0:  # weights are partitioned across the optimizer-state files
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return dict(get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag))
    return {k: v.float() if v.is_floating_point() else v for k, v in states["module"].items()}


def _averaged(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "epochs.json"
    if not index.is_file():
        raise UserError(f"{folder} holds no weight average yet (no epochs.json); train at least one epoch with "
                        f"weight_averaging.enabled=true")
    doc = json.loads(index.read_text())
    return torch.load(folder / doc["file"], map_location="cpu", weights_only=True)


def _model_states(tag_dir: Path) -> dict:
    files = sorted(tag_dir.glob("*mp_rank_00_model_states.pt"))
    if not files:
        raise UserError(f"{tag_dir} is not a DeepSpeed checkpoint (no mp_rank_00_model_states.pt)")
    # DeepSpeed's model-state file holds tensors, plain containers and, in the client state, numpy's
    # RNG state (a uint32 array): exactly that much is allowed, no other Python object.
    core = getattr(np, "_core", None) or np.core
    allowed = [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(files[0], map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign pickle or a truncated file
        text = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read {files[0]} safely: it is not a dass-distill training checkpoint "
                              f"or it is damaged ({text})") from None


def load_trained_model(path: Path, tag: str | None = None) -> tuple[TrainableModel, ModelInfo, Path, str]:
    """Rebuild a trained model from its run folder with the chosen checkpoint's weights."""
    run_dir, ckpt_dir, tag = resolve_checkpoint(path, tag)
    info = ModelInfo.load(run_dir)
    if info.task == "pretrain":
        raise UserError(f"{run_dir} is a self-supervised pretraining run: its model has no classifier yet; "
                        f"fine-tune it first: dass-distill train --model {info.name} pretrained={run_dir} ...")
    model = info.build()
    state = consolidated_state_dict(ckpt_dir, tag)
    missing, unexpected = model.module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"checkpoint {ckpt_dir / tag} does not fit model {info.name}: first offending key "
                        f"{(missing or unexpected)[0]}")
    model.module.eval()
    return model, info, run_dir, tag
