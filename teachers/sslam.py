"""SSLAM (Alex et al., ICLR 2025) teacher: ``SSLAMTeacher``, the EAT / data2vec 2.0 ViT-B fine-tuned
on AudioSet behind its Kaldi-fbank front end (``front_end_for``). The config is in
``configuration_sslam``, the modules in ``modeling_sslam`` and the checkpoint formats (key renaming,
writers, ``load_sslam_classifier``) in ``convert_sslam``; the names other code imports from here are
re-exported.
"""

from __future__ import annotations

from pathlib import Path


from dass_distill.frontend import KaldiFbank

from .base import FbankTeacher, sha256_of
from .configuration_sslam import SSLAMConfig
from .convert_sslam import fairseq_cfg, load_sslam_classifier, save_sslam_checkpoint, save_sslam_safetensors
from .modeling_sslam import SSLAMClassifier, sincos_positions

__all__ = [
    "NORM_MEAN", "NORM_STD", "SSLAMClassifier", "SSLAMConfig", "SSLAMTeacher", "fairseq_cfg", "front_end_for",
    "load_sslam_classifier", "save_sslam_checkpoint", "save_sslam_safetensors", "sincos_positions",
]

# EAT / SSLAM inference normalisation (the rounded AudioSet statistics of their scripts)
NORM_MEAN, NORM_STD = -4.268, 4.569


def front_end_for(config: SSLAMConfig) -> KaldiFbank:
    return KaldiFbank(target_length=config.target_length, num_mel_bins=config.num_mel_bins,
                      mean=NORM_MEAN, std=NORM_STD)


class SSLAMTeacher(FbankTeacher):
    """SSLAM with its Kaldi-fbank front end; outputs are positional (AudioSet order)."""

    kind = "sslam"

    def __init__(self, model: SSLAMClassifier, name: str = "sslam", front_end: KaldiFbank | None = None) -> None:
        front_end = front_end or front_end_for(model.config)
        super().__init__(name, front_end.sampling_rate, model.config.num_classes)
        self.model = model.eval()
        self.front_end = front_end

    @classmethod
    def from_config(cls, config: SSLAMConfig, name: str = "sslam") -> "SSLAMTeacher":
        """A randomly initialised teacher (for tests and smoke runs)."""
        return cls(SSLAMClassifier(config), name)

    @classmethod
    def from_checkpoint(cls, path: str | Path, name: str = "sslam", allow_pickle: bool = False) -> "SSLAMTeacher":
        """Load a fairseq ``.pt``, a ``.safetensors`` file or a Hugging Face folder."""
        model, file = load_sslam_classifier(path, allow_pickle)
        teacher = cls(model, name)
        teacher.checkpoint = str(Path(path).resolve())
        teacher.checkpoint_sha256 = sha256_of([file])
        return teacher

    @property
    def config(self) -> SSLAMConfig:
        return self.model.config

    def short_clip_rule(self) -> str:
        return (f"fbank zero-padded to {self.front_end.target_length} frames before normalisation "
                "(as the original EAT/SSLAM inference)")
