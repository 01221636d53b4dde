"""The HEAR 2021 embedding API over an exported student folder, for HEAR-style evaluations.

    import dass_distill.hear as hear
    model = hear.load_model("models/student")                   # an exported DASS / AuM / SSAMBA folder
    scene = hear.get_scene_embeddings(audio, model)             # (n_sounds, model.scene_embedding_size)
    emb, ts = hear.get_timestamp_embeddings(audio, model)       # (n_sounds, n_frames, size), (n_sounds, n_frames) ms

``audio`` is (n_sounds, n_samples) float audio in [-1, 1] at ``model.sample_rate`` (16 kHz).
The embeddings are those of :mod:`dass_distill.embeddings` (scene: what the classifier reads;
timestamps: the frequency-averaged features per time step, stamped at their centres).
"""

from __future__ import annotations

import torch

from dass_distill.embeddings import Embedder


class HearModel(torch.nn.Module):
    """What HEAR's ``load_model`` returns: the model plus its sample rate and embedding sizes."""

    def __init__(self, embedder: Embedder) -> None:
        super().__init__()
        self.embedder = embedder
        self.model = embedder.module
        self.sample_rate = embedder.sample_rate
        self.scene_embedding_size = self.timestamp_embedding_size = embedder.size


def load_model(model_file_path: str = "") -> HearModel:
    """An exported student folder (``dass-distill export`` / ``import``) as a HEAR model."""
    return HearModel(Embedder(model_file_path))


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """(n_sounds, n_samples) -> (n_sounds, scene_embedding_size)."""
    return model.embedder.waves(audio.float().cpu()).clip


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_sounds, n_samples) -> embeddings (n_sounds, n_frames, size) and their centre times in ms
    (n_sounds, n_frames)."""
    e = model.embedder.waves(audio.float().cpu())
    return e.frames, e.timestamps_ms.expand(e.frames.shape[0], -1).contiguous()
