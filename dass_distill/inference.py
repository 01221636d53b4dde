"""Using exported models: load a folder, tag audio files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from dass_distill.data.audio import read_audio
from dass_distill.errors import UserError
from dass_distill.frontend import KaldiFbank
from dass_distill.models import ModelFamily, family_of
from dass_distill.registry import family_for_model_type
from dass_distill.students import load_config, load_feature_extractor


@dataclass
class Tagger:
    """An exported model ready for inference: waveform -> features -> logits."""

    module: Callable[[torch.Tensor], torch.Tensor]  # (B, T, F) -> (B, C) logits: nn.Module or a graph runner
    featurize: Callable[[torch.Tensor], torch.Tensor]  # (samples,) -> (T, F), every frame kept
    featurize_clip: Callable[[torch.Tensor], torch.Tensor]  # (samples,) -> (target_length, F), as in training
    sample_rate: int
    label_ids: list[str]
    label_names: list[str]
    kind: str

    @classmethod
    def from_module(cls, module: nn.Module, fe: KaldiFbank, label_ids: list[str], label_names: list[str]) -> "Tagger":
        """A Tagger around an in-memory model of any registered family (no export folder needed)."""
        family = family_of(module)
        return cls(module.eval(), _featurize(fe, family), fe, fe.sampling_rate, list(label_ids), list(label_names),
                   family.name)

    @torch.inference_mode()
    def scores(self, wave: torch.Tensor) -> torch.Tensor:
        """Sigmoid class scores (C,) of one waveform at ``sample_rate``."""
        feats = self.featurize(wave).unsqueeze(0)
        return torch.sigmoid(self.module(feats).float())[0]

    def tag_file(self, path: str | Path, top_k: int = 5) -> list[tuple[str, float]]:
        """Top-k (label name, score) of an audio file of any format, rate and channel count."""
        return self.top(self.scores(read_audio(path, self.sample_rate)), top_k)

    def top(self, scores: torch.Tensor, top_k: int = 5) -> list[tuple[str, float]]:
        """Top-k (label name, score) of (C,) scores."""
        values, idx = scores.topk(min(top_k, len(scores)))
        return [(self.label_names[i], float(v)) for v, i in zip(values.tolist(), idx.tolist())]


BACKENDS = ("torch", "onnx", "pt2")


def load_tagger(folder: str | Path, backend: str = "torch") -> Tagger:
    """Load an exported folder of any registered family (DASS and other students, AST, SSLAM).

    ``backend``: ``torch`` runs the safetensors weights; ``onnx`` / ``pt2`` run the
    folder's ``model.onnx`` (ONNX Runtime) or ``model.pt2`` (``torch.export``) with the
    same front end and labels.
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown backend '{backend}'; choose from {', '.join(BACKENDS)}")
    folder = Path(folder)
    config_path = folder / "config.json"
    if not folder.is_dir() or not config_path.is_file():
        raise UserError(f"{folder} is not an exported model folder (no config.json); run 'dass-distill export' first")
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise UserError(f"{config_path} is not valid JSON ({e}); re-export the model") from None
    family = family_for_model_type(model_type, folder)
    if backend == "torch":
        module, fe, label_ids, names, _ = family.load_folder(folder)
        return Tagger(module.eval(), _featurize(fe, family), fe, fe.sampling_rate, list(label_ids), list(names),
                      family.name)
    if not family.graph_export:
        raise UserError(f"{folder} holds a {family.name} model ({family.description}), which has no {backend} "
                        f"files; use the torch backend")
    from dass_distill.graph_export import load_graph

    # A graph file needs only the configs beside it, not the safetensors weights.
    config, fe = load_config(folder), load_feature_extractor(folder)
    names = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    return Tagger(load_graph(folder, backend, len(names)), _featurize(fe, family), fe, fe.sampling_rate,
                  list(config.get("label_ids", names)), names, f"{family.name}-{backend}")


def _featurize(fe: KaldiFbank, family: ModelFamily) -> Callable[[torch.Tensor], torch.Tensor]:
    """Models without a fixed position table see every frame of a long clip; the others their window."""
    return _full_length(fe) if family.any_length else fe.one


def _full_length(fe: KaldiFbank) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda wave: fe.one(wave, pad_to_target=False)
