"""``dass-distill import``: a released student checkpoint -> a verified model folder.

The checkpoint is loaded strictly in its family's original layout (DASS ``.pth``, AuM, a
fine-tuned SSAMBA; ``registry.load_weights``) into the named model with one output per
class of the label map, and written through the same path as ``export`` (Hugging Face
folder, optional ONNX / torch.export graphs, each artefact checked against the loaded
module). ``predict``, ``evaluate`` and timelines then work on released models with no
training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from dass_distill.data.manifest import LabelMap
from dass_distill.errors import UserError
from dass_distill.export import DEFAULT_ATOL, ExportReport, export_module, parse_formats
from dass_distill.registry import create_model, family_of, load_weights, resolve
from dass_distill.teachers.base import sha256_of


def import_checkpoint(checkpoint: str | Path, model: str, labels: str | Path, out: str | Path,
                      target_length: int = 1024, formats: list[str] | None = None, atol: float = DEFAULT_ATOL,
                      allow_pickle: bool = False, log: Callable[[str], None] = lambda msg: None) -> ExportReport:
    """Load ``checkpoint`` into ``model`` (``len(labels)`` classes) and write it to ``out`` as a
    checked model folder; ``target_length`` is the front end's clip length (frames of 10 ms)."""
    checkpoint, out = Path(checkpoint), Path(out)
    if not checkpoint.is_file():
        raise UserError(f"checkpoint {checkpoint} not found")
    label_map = LabelMap.from_csv(labels)
    family = family_of(model)
    if not family.student or family.load_weights is None:
        raise UserError(f"import takes released student checkpoints (dass_*, aum_*, ssamba_*); {model} is a "
                        f"{family.name} model")
    formats = parse_formats(formats)
    module = create_model(model, num_classes=len(label_map), target_length=target_length)
    log(f"loading {checkpoint} into {resolve(model)} ({len(label_map)} classes)")
    load_weights(module, checkpoint, allow_pickle)
    provenance = {"imported_from": str(checkpoint.resolve()), "checkpoint_sha256": sha256_of([checkpoint]),
                  "model": resolve(model), "target_length": target_length}
    fe = family.front_end(module.config, target_length)
    return export_module(module, family, fe, target_length, list(label_map.ids), list(label_map.names), provenance,
                         out, formats, atol, tag="imported", log=log)
