"""Student models: DASS (VMamba-style 2D selective scan)."""

from .dass import DASS, DassConfig
from .feature_extraction import DassFeatureExtractor
from .hub import ModelFolderError, from_pretrained, save_pretrained
from .registry import create_model, list_models, model_config, register_model

__all__ = ["DASS", "DassConfig", "DassFeatureExtractor", "ModelFolderError", "from_pretrained", "save_pretrained", "create_model", "list_models", "model_config", "register_model"]
