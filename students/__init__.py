"""Student models: DASS (VMamba-style 2D selective scan), the Audio Mamba families AuM and SSAMBA
(bidirectional Mamba over patch tokens), and the CNN baseline they are compared with.

``create_model``, ``list_models`` and ``load_weights`` are the toolkit's model registry
(:mod:`dass_distill.registry`); importing this package registers the student families
(:mod:`.families`).
"""

from dass_distill.registry import ModelFamily, create_model, family_of, list_models, load_weights, model_config

from . import families
from .aum import AuM
from .bimamba import BiMamba
from .cnn import CNNBaseline, CNNConfig
from .convert_dass import checkpoint_filter_fn, init_from_vmamba, load_dass_weights
from .dass import DASS, DassConfig
from .hub import ModelFolderError, from_pretrained, load_config, load_feature_extractor, save_pretrained
from .ssamba import SSAMBA
from .vim import AudioMambaConfig

__all__ = [
    "AudioMambaConfig", "AuM", "BiMamba", "CNNBaseline", "CNNConfig", "DASS", "DassConfig", "ModelFamily",
    "ModelFolderError", "SSAMBA", "checkpoint_filter_fn", "create_model", "families", "family_of",
    "from_pretrained", "init_from_vmamba", "list_models", "load_config", "load_dass_weights",
    "load_feature_extractor", "load_weights", "model_config", "save_pretrained",
]
