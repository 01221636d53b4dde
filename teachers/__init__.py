"""Teacher models, their front ends and checkpoint loaders."""

from .ast import AST_CONFIGS, ASTClassifier, ASTTeacher, ast_config, save_ast_folder
from .base import CheckpointError, Teacher
from .frontends import KaldiFbank
from .registry import load_teacher, teacher_kinds

__all__ = [
    "AST_CONFIGS", "ASTClassifier", "ASTTeacher", "CheckpointError", "KaldiFbank", "Teacher",
    "ast_config", "load_teacher", "save_ast_folder", "teacher_kinds",
]
