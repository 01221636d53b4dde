"""Teacher models, their front ends, checkpoint loaders and ensembles."""

from .ast import AST_CONFIGS, ASTClassifier, ASTTeacher, ast_config, save_ast_folder
from dass_distill.checkpoint_files import CheckpointError
from dass_distill.frontend import KaldiFbank

from .base import ClipPolicy, SpecMask, Teacher, apply_masks
from .ensemble import COMBINE_MODES, Ensemble, combine_logits
from .registry import load_teacher, teacher_kinds

__all__ = [
    "AST_CONFIGS", "ASTClassifier", "ASTTeacher", "COMBINE_MODES", "CheckpointError", "ClipPolicy", "Ensemble",
    "KaldiFbank", "SpecMask", "Teacher", "apply_masks", "ast_config", "combine_logits", "load_teacher",
    "save_ast_folder", "teacher_kinds",
]
