"""Self-contained transformers code written into every exported student folder.

The three files here import only torch, numpy and transformers (never this toolkit), so an
exported folder loads anywhere with ``trust_remote_code=True``::

    AutoModelForAudioClassification.from_pretrained(folder, trust_remote_code=True)
    AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=True)
    pipeline("audio-classification", model=folder, trust_remote_code=True)

They re-implement the students' inference (pure-torch scans, the Kaldi filterbank) from
their definitions; tests check them against the toolkit's own modules and front end.
"""

from __future__ import annotations

from pathlib import Path

CODE_DIR = Path(__file__).parent
CONFIGURATION_FILE = "configuration_dass_distill.py"
MODELING_FILE = "modeling_dass_distill.py"
FEATURE_EXTRACTION_FILE = "feature_extraction_dass_distill.py"
CODE_FILES = (CONFIGURATION_FILE, MODELING_FILE, FEATURE_EXTRACTION_FILE)
FEATURE_EXTRACTOR_CLASS = "DassDistillFeatureExtractor"

# model_type -> (config class, model class) in the files above.
CLASSES: dict[str, tuple[str, str]] = {
    "dass": ("DassConfig", "DassForAudioClassification"),
    "aum": ("AuMConfig", "AuMForAudioClassification"),
    "ssamba": ("SsambaConfig", "SsambaForAudioClassification"),
    "cnn_baseline": ("CNNBaselineConfig", "CNNBaselineForAudioClassification"),
}


def auto_map(model_type: str) -> dict[str, str]:
    """``auto_map`` of a folder's config.json (transformers' remote-code entry points)."""
    config_class, model_class = CLASSES[model_type]
    return {
        "AutoConfig": f"{CONFIGURATION_FILE[:-3]}.{config_class}",
        "AutoModelForAudioClassification": f"{MODELING_FILE[:-3]}.{model_class}",
        **feature_extractor_auto_map(),
    }


def feature_extractor_auto_map() -> dict[str, str]:
    """``auto_map`` of a folder's preprocessor_config.json."""
    return {"AutoFeatureExtractor": f"{FEATURE_EXTRACTION_FILE[:-3]}.{FEATURE_EXTRACTOR_CLASS}"}
