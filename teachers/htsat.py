"""HTS-AT (Chen et al., 2022) teachers: ``HTSATTeacher`` runs our own implementation of the model
on raw 32 kHz waveforms and loads the released Lightning ``.ckpt`` files; ``HTSATFbankTeacher`` runs
an HTS-AT trained here (``train --model htsat_tiny``) on the Kaldi filterbank it was trained on. The config is in
``configuration_htsat``, the modules in ``modeling_htsat`` and the checkpoint layout (writer,
front-end matrix check) in ``convert_htsat``; the names other code imports from here are re-exported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dass_distill.checkpoint_files import CheckpointError, load_strict, read_checkpoint, state_dict_in, strip_prefix
from dass_distill.frontend import KaldiFbank

from .base import FbankTeacher, SpecMask, Teacher, guess_kind, sha256_of, wrong_kind_hint
from .configuration_htsat import FRONT_END_MATRICES, HTSATConfig
from .convert_htsat import (DERIVED_BUFFERS, PREFIXES, _front_end_mismatch, load_htsat_folder, save_htsat_checkpoint,
                            save_htsat_folder)
from .modeling_htsat import HTSATFbankClassifier, HTSATModel, mel_matrix, stft_matrices

__all__ = [
    "FRONT_END_MATRICES", "HTSATConfig", "HTSATFbankClassifier", "HTSATFbankTeacher", "HTSATModel", "HTSATTeacher",
    "load_htsat_folder", "mel_matrix", "save_htsat_checkpoint", "save_htsat_folder", "stft_matrices",
]


class HTSATTeacher(Teacher):
    """HTS-AT on raw 32 kHz waveforms: 10 s windows, short clips zero-padded at the end."""

    kind = "htsat"

    def __init__(self, model: HTSATModel, name: str = "htsat", matrices: str = "computed") -> None:
        cfg = model.config
        super().__init__(name, sample_rate=cfg.sample_rate, num_classes=cfg.num_classes)
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.matrices = matrices        # where the STFT / mel matrices came from: 'checkpoint' | 'computed'

    @property
    def config(self) -> HTSATConfig:
        return self.model.config

    @classmethod
    def from_config(cls, config: HTSATConfig, name: str = "htsat") -> "HTSATTeacher":
        return cls(HTSATModel(config), name)

    @classmethod
    def from_checkpoint(cls, path: str | Path, name: str = "htsat", allow_pickle: bool = False) -> "HTSATTeacher":
        """Load a released Lightning ``.ckpt`` (or a bare / ``module.``-prefixed state dict).

        No key is dropped; a state dict holding none of the three front-end matrices
        gets them computed (recorded as ``matrices: computed`` in the front-end params).
        """
        path = Path(path)
        sd = state_dict_in(read_checkpoint(path, "htsat teacher", allow_pickle), "htsat teacher", path)
        sd = strip_prefix(strip_prefix(sd, PREFIXES[:1]), PREFIXES[1:])
        kind = guess_kind(list(sd))
        if kind is not None and kind != "htsat":
            raise CheckpointError(f"htsat teacher: {path} is not an HTS-AT checkpoint" + wrong_kind_hint(list(sd), "htsat"))
        try:
            config = HTSATConfig.from_state_dict(sd)
        except ValueError as e:
            raise CheckpointError(f"htsat teacher: {path} is not an HTS-AT state dict ({e})"
                                  + wrong_kind_hint(list(sd), "htsat")) from None
        model = HTSATModel(config)
        matrices = "checkpoint"
        if not any(k in sd for k in FRONT_END_MATRICES):
            own = model.state_dict()
            sd = {**sd, **{k: own[k] for k in FRONT_END_MATRICES}}
            matrices = "computed"
        # the released checkpoints also store these index/mask buffers; they must be the ones the
        # inferred architecture implies, or the config was inferred wrong
        derived = {k: v.clone() for k, v in model.named_buffers() if k.endswith(DERIVED_BUFFERS)}
        load_strict(model, sd, "htsat teacher", path, hint=wrong_kind_hint(list(sd), "htsat"))
        own = dict(model.named_buffers())
        for key, expected in derived.items():
            if not torch.equal(own[key], expected):
                raise CheckpointError(f"htsat teacher: {path} buffer '{key}' does not match the architecture "
                                      f"inferred from its weight shapes ({config.window_size}-token windows, "
                                      f"{config.spec_size}x{config.spec_size} input)")
        bad = _front_end_mismatch(model)
        if bad:
            raise CheckpointError(
                f"htsat teacher: {path} weight '{bad}' is not the front end of this config "
                f"({config.sample_rate} Hz, n_fft {config.n_fft}, {config.mel_bins} Slaney mels "
                f"{config.fmin:g}-{config.fmax:g} Hz, periodic Hann); a checkpoint trained with other audio settings")
        teacher = cls(model, name, matrices)
        teacher.checkpoint = str(path.resolve())
        teacher.checkpoint_sha256 = sha256_of([path])
        return teacher

    @property
    def window_samples(self) -> int:
        return self.config.clip_samples

    def short_clip_rule(self) -> str:
        cfg = self.config
        return (f"zero-padded at the end to {cfg.clip_samples} samples ({cfg.clip_samples / cfg.sample_rate:g} s) "
                f"before the STFT, as the original's pad_or_truncate; the {cfg.num_frames} frames are then "
                f"bicubic-stretched to {cfg.spec_size * cfg.freq_ratio}")

    def front_end_params(self) -> dict:
        cfg = self.config
        return {
            "type": "torchlibrosa log-mel + BatchNorm (HTS-AT)",
            "sample_rate": cfg.sample_rate, "n_fft": cfg.n_fft, "win_length": cfg.n_fft, "hop_length": cfg.hop,
            "window": "hann (periodic)", "center": True, "pad_mode": "reflect", "power": 2.0,
            "mel_bins": cfg.mel_bins, "fmin": cfg.fmin, "fmax": cfg.fmax, "mel": "slaney scale, slaney norm",
            "log": f"10*log10(max(x, {cfg.amin:g})) - 10*log10(max({cfg.amin:g}, {cfg.ref:g})), no top_db",
            "normalise": "bn0 running statistics from the checkpoint",
            "matrices": self.matrices,
            "clip_samples": cfg.clip_samples, "frames": cfg.num_frames,
            "stretch": {"to": cfg.spec_size * cfg.freq_ratio, "mode": "bicubic", "align_corners": True},
            "image": {"size": cfg.spec_size, "freq_ratio": cfg.freq_ratio},
        }

    def centre_frequencies(self) -> torch.Tensor:
        """(mel_bins,) centre of each mel filter in Hz: the frequency ``k * sample_rate / n_fft`` of
        the FFT bin k where the model's (Slaney) filter has its largest weight."""
        cfg = self.config
        peak = self.model.logmel_extractor.melW.detach().float().cpu().argmax(dim=0)
        return peak.double() * cfg.sample_rate / cfg.n_fft

    def frame_shift_ms(self) -> float:
        return 1000.0 * self.config.hop / self.config.sample_rate

    @torch.inference_mode()
    def window_logits(self, waveforms: Sequence[torch.Tensor],
                      masks: Sequence[SpecMask | None] | None = None) -> torch.Tensor:
        n = self.window_samples
        if len(waveforms) == 0:
            return torch.empty(0, self.num_classes, device=self.device)
        waves = [w.reshape(-1).float().to(self.device) for w in waveforms]
        longest = max(w.numel() for w in waves)
        if longest > n:
            raise ValueError(f"htsat teacher: a {longest}-sample clip exceeds the {n}-sample window; use logits()")
        batch = nn.utils.rnn.pad_sequence(waves, batch_first=True)      # zero-pads at the end
        batch = F.pad(batch, (0, n - batch.shape[1]))
        feats = self.model.logmel(batch)                                   # (B, 1, T, F) fp32, after bn0
        if masks is not None:
            # the original's SpecAugmentation sits here too: after bn0, before the bicubic stretch
            feats = self.mask_features(feats[:, 0], masks)[:, None]
        img = self.model.to_image(feats)
        with self.model_precision():
            return self.model.forward_image(img).float()


class HTSATFbankTeacher(FbankTeacher):
    """An HTS-AT trained here, on the normalised Kaldi filterbank of its exported folder."""

    kind = "htsat"

    def __init__(self, model: HTSATFbankClassifier, front_end: KaldiFbank, name: str = "htsat",
                 label_ids: list[str] | None = None, label_names: list[str] | None = None) -> None:
        super().__init__(name, front_end.sampling_rate, model.config.num_classes, label_ids, label_names)
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.front_end = front_end

    @classmethod
    def from_folder(cls, folder: str | Path, name: str = "htsat") -> "HTSATFbankTeacher":
        """Load a folder written by ``dass-distill export`` (``save_htsat_folder``)."""
        model, front_end, label_ids, names, _ = load_htsat_folder(folder)
        teacher = cls(model, front_end, name, label_ids, names)
        teacher.checkpoint = str(Path(folder).resolve())
        teacher.checkpoint_sha256 = sha256_of([Path(folder) / "model.safetensors"])
        return teacher

    @property
    def config(self) -> HTSATConfig:
        return self.model.config

    def short_clip_rule(self) -> str:
        cfg = self.config
        return (f"fbank zero-padded to {self.front_end.target_length} frames before normalisation, then "
                f"bicubic-stretched to {cfg.spec_size * cfg.freq_ratio} frames (HTS-AT's image folding)")
