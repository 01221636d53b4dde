"""AST (Gong et al., 2021) teacher on transformers' ``ASTForAudioClassification``.

A teacher folder is a transformers checkpoint folder: ``config.json`` (with
``id2label``; ``label_ids`` holds the AudioSet mids when known), the weights
(``model.safetensors``), and ``preprocessor_config.json`` in ASTFeatureExtractor's
format, from which the front end takes ``max_length``, ``mean`` and ``std``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
from transformers import ASTConfig, ASTForAudioClassification

from .base import CheckpointError, Teacher, sha256_of
from .frontends import KaldiFbank

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# Named AST sizes. ast_base is the released AudioSet model's layout (DeiT-B, stride 10).
AST_CONFIGS: dict[str, dict] = {
    "ast_tiny": dict(hidden_size=96, num_hidden_layers=3, num_attention_heads=3, intermediate_size=384,
                     frequency_stride=16, time_stride=16, hidden_dropout_prob=0.1),
    "ast_small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "ast_base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


class ASTClassifier(nn.Module):
    """Filterbank (B, T, F) -> logits (B, C): the trainable part of an AST teacher."""

    def __init__(self, ast: ASTForAudioClassification) -> None:
        super().__init__()
        self.ast = ast

    @classmethod
    def from_config(cls, config: ASTConfig) -> "ASTClassifier":
        return cls(ASTForAudioClassification(config))

    @property
    def config(self) -> ASTConfig:
        return self.ast.config

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.ast(input_values=fbank).logits


def ast_config(name: str, num_classes: int, target_length: int = 1024, label_ids: list[str] | None = None,
               label_names: list[str] | None = None, **overrides) -> ASTConfig:
    """An ``ASTConfig`` for a named size (``ast_tiny``, ``ast_small``, ``ast_base``)."""
    if name not in AST_CONFIGS:
        raise KeyError(f"unknown AST size '{name}'; known: {', '.join(AST_CONFIGS)}")
    names = label_names or [f"class_{i}" for i in range(num_classes)]
    kwargs = {**AST_CONFIGS[name], **overrides}
    return ASTConfig(
        max_length=target_length,
        num_mel_bins=128,
        layer_norm_eps=1e-6,  # the original AST (timm DeiT) value; transformers defaults to 1e-12
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        label_ids=list(label_ids or names),
        **kwargs,
    )


def front_end_for(config: ASTConfig) -> KaldiFbank:
    return KaldiFbank(target_length=config.max_length, num_mel_bins=config.num_mel_bins)


def preprocessor_config(front_end: KaldiFbank) -> dict:
    """transformers' ASTFeatureExtractor fields, so the folder also loads there."""
    return {
        "feature_extractor_type": "ASTFeatureExtractor",
        "feature_size": 1,
        "sampling_rate": front_end.sample_rate,
        "num_mel_bins": front_end.num_mel_bins,
        "max_length": front_end.target_length,
        "do_normalize": True,
        "mean": front_end.mean,
        "std": front_end.std,
        "padding_value": 0.0,
        "return_attention_mask": False,
    }


def save_ast_folder(model: ASTClassifier, folder: str | Path) -> Path:
    """Write a trained AST as a teacher folder (transformers layout + preprocessor config)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.ast.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(front_end_for(model.config)), indent=2))
    return folder


class ASTTeacher(Teacher):
    """AST with its Kaldi-fbank front end, from a transformers folder or a config."""

    kind = "ast"

    def __init__(self, model: ASTClassifier, front_end: KaldiFbank, name: str = "ast") -> None:
        cfg = model.config
        names = [cfg.id2label[i] for i in range(cfg.num_labels)]
        ids = list(getattr(cfg, "label_ids", None) or names)
        super().__init__(name, front_end.sample_rate, ids, names)
        self.model = model.eval()
        self.front_end = front_end

    @classmethod
    def from_config(cls, config: ASTConfig, name: str = "ast") -> "ASTTeacher":
        return cls(ASTClassifier.from_config(config), front_end_for(config), name)

    @classmethod
    def from_folder(cls, folder: str | Path, name: str = "ast") -> "ASTTeacher":
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"AST teacher: {folder} is not a folder; pass a transformers AST checkpoint folder")
        weights = [folder / w for w in WEIGHT_FILES if (folder / w).is_file()]
        if not (folder / "config.json").is_file() or not weights:
            raise CheckpointError(
                f"AST teacher: {folder} needs config.json and model.safetensors (a transformers checkpoint folder)"
            )
        try:
            config = ASTConfig.from_pretrained(folder)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"AST teacher: {folder}/config.json is not an AST config ({e})") from None
        if config.model_type != "audio-spectrogram-transformer":
            raise CheckpointError(f"AST teacher: {folder} holds a '{config.model_type}' model, not an AST")
        try:
            hf, info = ASTForAudioClassification.from_pretrained(folder, output_loading_info=True)
        except Exception as e:  # transformers raises many types for bad weights
            raise CheckpointError(f"AST teacher: cannot load weights from {folder} ({e})") from None
        bad = info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]
        if bad:
            raise CheckpointError(f"AST teacher: {weights[0]} does not match its config; first offending key: {sorted(bad)[0]}")
        model = ASTClassifier(hf)
        front_end = front_end_for(config)
        prep = folder / "preprocessor_config.json"
        if prep.is_file():
            p = json.loads(prep.read_text())
            front_end = KaldiFbank(
                sample_rate=p.get("sampling_rate", 16000),
                num_mel_bins=p.get("num_mel_bins", config.num_mel_bins),
                target_length=p.get("max_length", config.max_length),
                mean=p.get("mean", front_end.mean),
                std=p.get("std", front_end.std),
            )
        teacher = cls(model, front_end, name)
        teacher.checkpoint = str(folder.resolve())
        teacher.checkpoint_sha256 = sha256_of(weights)
        return teacher

    def front_end_params(self) -> dict:
        return self.front_end.params()

    @torch.inference_mode()
    def logits(self, waveforms: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        feats = self.front_end([w.to(self.device) for w in waveforms])
        return self.model(feats).float()
