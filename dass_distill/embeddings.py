"""Clip and timestamped frame embeddings of the student families (``dass-distill embed``).

* clip embedding: what the classifier reads (DASS: the normalised feature map averaged over
  frequency and time; AuM: the normalised class token; SSAMBA: the mean of the patch tokens
  or the class token, as its head is configured);
* frame embeddings: the same features before time pooling, averaged over frequency only,
  one row per time step of the model's grid, with the time (ms) of its receptive field's
  centre in the recording: DASS every 32 fbank frames (320 ms), AuM and SSAMBA every
  ``tstride`` frames (patch centre: ``t * tstride + 8`` frames). Frame ``k`` of the Kaldi
  fbank is centred at ``10 k + 12.5`` ms (25 ms windows, 10 ms hop).

A whole recording goes through the model at once (the students take any length).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dass_distill.errors import UserError
from dass_distill.students import DASS, SSAMBA, AuM

#: Fbank frame hop and the centre of frame 0 (half of a 25 ms window), in ms.
HOP_MS, FIRST_CENTRE_MS = 10.0, 12.5
#: DASS's time downsampling (a stride-4 stem and three stride-2 stages).
DASS_STRIDE = 32


@dataclass
class Embeddings:
    clip: torch.Tensor  # (B, D)
    frames: torch.Tensor  # (B, T', D)
    timestamps_ms: torch.Tensor  # (T',) centre of each frame embedding


def _patch_frames(patches: torch.Tensor, grid: tuple[int, int], tstride: int, patch: int) -> tuple:
    B, _, D = patches.shape
    frames = patches.reshape(B, grid[0], grid[1], D).mean(dim=1)
    centres = torch.arange(grid[1]) * tstride + patch / 2
    return frames, centres


@torch.inference_mode()
def embed(module: torch.nn.Module, fbank: torch.Tensor) -> Embeddings:
    """Clip and frame embeddings of a (B, T, F) filterbank batch."""
    if isinstance(module, DASS):
        fmap = module.classifier.norm(module.forward_features(fbank))  # (B, C, F', T')
        clip = fmap.mean(dim=(2, 3))
        frames = fmap.mean(dim=2).transpose(1, 2)
        centres = (torch.arange(frames.shape[1]) + 0.5) * DASS_STRIDE
    elif isinstance(module, AuM):
        tokens, grid = module.patchify(fbank)
        hidden, middle = module.encode(tokens, grid)
        clip = hidden[:, middle]
        patches = torch.cat([hidden[:, :middle], hidden[:, middle + 1:]], dim=1)
        frames, centres = _patch_frames(patches, grid, module.config.tstride, module.config.patch_size)
    elif isinstance(module, SSAMBA):
        tokens, grid = module.patchify(fbank)
        hidden = module.v.encode(tokens, grid)
        clip = hidden[:, 1:].mean(dim=1) if module.config.head == "avgtok" else hidden[:, 0]
        frames, centres = _patch_frames(hidden[:, 1:], grid, module.config.tstride, module.config.patch_size)
    else:
        raise UserError(f"embeddings are defined for the student families (DASS, AuM, SSAMBA), not for "
                        f"{type(module).__name__}")
    return Embeddings(clip.float(), frames.float(), (centres * HOP_MS + FIRST_CENTRE_MS).float())


class Embedder:
    """An exported student folder as an embedding model (``load_embedder(folder)``)."""

    def __init__(self, folder: str | Path) -> None:
        from dass_distill.inference import load_tagger

        self.tagger = load_tagger(folder)
        if not isinstance(self.tagger.module, (DASS, AuM, SSAMBA)):
            raise UserError(f"{folder} holds a {self.tagger.kind} model; embeddings come from student folders "
                            f"(DASS, AuM, SSAMBA)")
        self.module = self.tagger.module
        self.sample_rate = self.tagger.sample_rate
        self.size = embed(self.module, torch.zeros(1, 200, 128)).clip.shape[1]

    def waves(self, waves: torch.Tensor) -> Embeddings:
        """(n, samples) audio at ``sample_rate`` -> embeddings (the same length for every row)."""
        feats = torch.stack([self.tagger.featurize(w) for w in waves])
        return embed(self.module, feats)

    def file(self, path: str | Path) -> Embeddings:
        from dass_distill.data.audio import read_audio

        return self.waves(read_audio(path, self.sample_rate).unsqueeze(0))


def write_embeddings(out: str | Path, results: dict[str, Embeddings], source: str) -> Path:
    """One entry per audio file: ``clip`` (D,), ``frames`` (T', D), ``timestamps_ms`` (T',). HDF5
    (``.h5``/``.hdf5``: a group per file, the path in its ``path`` attribute) or ``.npz``
    (keys ``<n>/clip`` etc., ``paths`` the file list)."""
    out = Path(out)
    if out.suffix.lower() in (".h5", ".hdf5"):
        import h5py

        with h5py.File(out, "w") as f:
            f.attrs["model"] = source
            for n, (path, e) in enumerate(results.items()):
                g = f.create_group(f"{n:06d}")
                g.attrs["path"] = path
                g["clip"], g["frames"], g["timestamps_ms"] = e.clip[0].numpy(), e.frames[0].numpy(), \
                    e.timestamps_ms.numpy()
    elif out.suffix.lower() == ".npz":
        arrays: dict[str, np.ndarray] = {"paths": np.array(list(results)), "model": np.array(source)}
        for n, e in enumerate(results.values()):
            arrays |= {f"{n}/clip": e.clip[0].numpy(), f"{n}/frames": e.frames[0].numpy(),
                       f"{n}/timestamps_ms": e.timestamps_ms.numpy()}
        np.savez(out, **arrays)
    else:
        raise UserError(f"--output {out}: use a .h5 (HDF5) or .npz file name")
    return out
