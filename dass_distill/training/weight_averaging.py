"""Weight averaging of epoch-end weights (DASS): the running mean, saved beside the checkpoints
so that it resumes with them."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from dass_distill.errors import UserError


def gathered_state_dict(engine, keep: bool = True) -> dict[str, torch.Tensor]:
    """Full fp32 weights of the engine's module (``{}`` where not ``keep``). Every rank must call
    it: under ZeRO-3 the partitions are gathered collectively."""
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None)
    else:
        gather = contextlib.nullcontext()
    with gather:
        return {k: v.detach().float().cpu().clone() for k, v in engine.module.state_dict().items()} if keep else {}


AVERAGE_FILE = "averaged/epochs_{}.pt"


def running_mean(previous: dict | None, weights: dict, count: int) -> dict:
    """Mean of ``count`` earlier weight sets (``previous``) and ``weights``."""
    if previous is None:
        return weights
    return {k: previous[k] + (weights[k] - previous[k]) / (count + 1) if weights[k].is_floating_point() else weights[k]
            for k in weights}


def save_average(ckpt_dir: Path, state: dict, epochs: list[int]) -> None:
    """Write the average of ``epochs`` atomically, and drop older averages."""
    path = ckpt_dir / AVERAGE_FILE.format("-".join(map(str, epochs)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    (path.parent / "epochs.json").write_text(json.dumps({"epochs": epochs, "file": path.name}))
    for old in path.parent.glob("epochs_*.pt"):
        if old != path and len(old.stem.split("_")[1].split("-")) < len(epochs) - 1:
            old.unlink()


def load_average(ckpt_dir: Path, epochs: list[int]) -> dict | None:
    """The running average over ``epochs`` (None when empty)."""
    if not epochs:
        return None
    path = ckpt_dir / AVERAGE_FILE.format("-".join(map(str, epochs)))
    if not path.is_file():
        raise UserError(f"{path} is missing: the weight average of epochs {epochs} cannot be continued; "
                        f"set weight_averaging.enabled=false or start a new output_dir")
    return torch.load(path, map_location="cpu", weights_only=True)
