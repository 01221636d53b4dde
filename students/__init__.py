"""Student models: DASS (VMamba-style 2D selective scan)."""

from .checkpoint import WeightsError, checkpoint_filter_fn, init_from_vmamba, load_dass_weights
from .dass import DASS, DassConfig
from .feature_extraction import DassFeatureExtractor
from .hub import ModelFolderError, from_pretrained, load_config, load_feature_extractor, save_pretrained
from .registry import create_model, list_models, model_config, register_model

__all__ = ["WeightsError", "checkpoint_filter_fn", "init_from_vmamba", "load_dass_weights", "DASS", "DassConfig", "DassFeatureExtractor", "ModelFolderError", "from_pretrained", "load_config", "load_feature_extractor", "save_pretrained", "create_model", "list_models", "model_config", "register_model"]
