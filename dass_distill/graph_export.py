"""Portable graph artefacts of a student: ONNX (``model.onnx``) and ``torch.export`` (``model.pt2``).

Both are captured once with ``torch.export`` with symbolic batch and time axes, so one
file serves clips of any length. During capture the student's selective scan takes its
pure-torch path with the fixed-structure linear scan (``kernels.linear_scan_static``):
the graph holds standard ops only (no custom kernels), which is what lets ONNX Runtime
run it. The artefacts sit in the exported model folder next to ``config.json`` (labels)
and ``preprocessor_config.json`` (the front end), which a user needs to feed them.

ONNX needs the ``onnx`` extra (onnx, onnxscript, onnxruntime); it is imported lazily.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from dass_distill.errors import UserError

__all__ = ["GRAPH_FILES", "MIN_FRAMES", "OnnxGraph", "capture", "load_graph", "save_graph"]

GRAPH_FILES = {"onnx": "model.onnx", "pt2": "model.pt2"}
# Shortest input the captured graph is checked for: the deepest stage must keep at least
# one column (stride 32). The feature extractor pads clips to target_length anyway.
MIN_FRAMES = 33
ONNX_OPSET = 18
_ONNX_HINT = "install the ONNX extra: pip install 'dass-distill[onnx]' (onnx, onnxscript, onnxruntime)"


def capture(module: nn.Module, sample_frames: int, num_mel_bins: int = 128) -> torch.export.ExportedProgram:
    """``torch.export`` of a ``(B, T, F) -> (B, C)`` student with dynamic batch and time axes."""
    module = module.eval()
    example = (torch.zeros(2, max(sample_frames, MIN_FRAMES), num_mel_bins),)
    # Dim.DYNAMIC rather than a named Dim with bounds: the export's constraint solver cannot
    # prove the (true) divisibility facts of the strided convolutions and rejects named
    # ranges; DYNAMIC keeps them as checks inside the graph instead.
    dyn = torch.export.Dim.DYNAMIC
    with torch.no_grad(), _quiet():
        return torch.export.export(module, example, dynamic_shapes={"fbank": {0: dyn, 1: dyn}})


def save_graph(program: torch.export.ExportedProgram, folder: Path, fmt: str) -> Path:
    """Write ``program`` as ``folder/model.onnx`` or ``folder/model.pt2``."""
    path = Path(folder) / GRAPH_FILES[fmt]
    if fmt == "pt2":
        torch.export.save(program, path)
        return path
    _require_onnx()
    with _quiet():
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=["fbank"], output_names=["logits"],
                                         opset_version=ONNX_OPSET, optimize=True, verbose=False)
        onnx_program.save(str(path))
    return path


def load_graph(folder: Path, fmt: str, num_classes: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable ``(B, T, F) float tensor -> (B, C) logits`` running the folder's artefact."""
    path = Path(folder) / GRAPH_FILES[fmt]
    if not path.is_file():
        raise UserError(f"{folder} has no {path.name}; add it with 'dass-distill export {folder} --out {folder} "
                        f"--format {fmt}'")
    if fmt == "pt2":
        try:
            module = torch.export.load(path).module()
        except Exception as e:  # a pt2 from another torch version, or a damaged file
            raise UserError(f"{path} cannot be loaded by torch {torch.__version__} ({type(e).__name__}); "
                            f"re-export it with this version, or use the folder's safetensors weights") from None
        return _TorchGraph(module)
    runner = OnnxGraph(path)
    if num_classes is not None and runner.num_classes not in (None, num_classes):
        raise UserError(f"{path} predicts {runner.num_classes} classes but config.json lists {num_classes}; "
                        f"re-export the folder")
    return runner


class _TorchGraph:
    """The unlifted ``torch.export`` module; a plain callable like the others."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.module(fbank.float())


class OnnxGraph:
    """An ONNX Runtime session (CPU) behind a torch-tensor interface."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        ort = _require_onnx()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # InvalidGraph, InvalidProtobuf, unsupported opset ...
            raise UserError(f"{path} is not a loadable ONNX model ({str(e).strip().splitlines()[0][:200]}); "
                            f"re-export it") from None
        self.input_name = self.session.get_inputs()[0].name
        dim = self.session.get_outputs()[0].shape[-1]
        self.num_classes = dim if isinstance(dim, int) else None

    def __call__(self, fbank: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(fbank.detach().cpu().float().numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0])


def _require_onnx():
    try:
        for name in ("onnx", "onnxscript"):  # torch.onnx's exporter needs both
            importlib.import_module(name)
        import onnxruntime
    except ImportError as e:
        raise UserError(f"ONNX support is not installed ({e.name} missing): {_ONNX_HINT}") from None
    return onnxruntime


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress prints and deprecation chatter; errors still raise."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
