"""Teachers you can train on your own labels: AST, SSLAM (EAT) and HTS-AT as registered model families.

The released checkpoints load as teachers (``dass-distill cache --teacher ast:FILE``);
these entries let ``train`` build them from scratch or fine-tune them (``train --model ast
pretrained=audioset_10_10_0.4593.pth``), and ``export`` write folders that the teacher
loaders read back. An ensemble of different kinds (AST + SSLAM) is then two trainings and
one cache. HTS-AT trains on the Kaldi filterbank (``HTSATFbankClassifier``): its windowed,
hierarchical attention learns a set of a few hundred clips from scratch where AST's global
attention over 16 x 16 patches does not (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import ASTConfig

from dass_distill.checkpoint_files import CheckpointError, load_strict
from dass_distill.errors import UserError
from dass_distill.frontend import KaldiFbank
from dass_distill.registry import ModelFamily, register_alias, register_family, register_model
from dass_distill.students.masked_patches import split_pretraining_state
from dass_distill.teachers import AST_CONFIGS, ASTClassifier, ASTTeacher, ast_config, load_teacher, save_ast_folder
from dass_distill.teachers.ast import front_end_for as ast_front_end
from dass_distill.teachers.ast_finetune import init_from_pretrained_ast
from dass_distill.teachers.convert_htsat import DERIVED_BUFFERS as HTSAT_DERIVED_BUFFERS
from dass_distill.teachers.htsat import HTSATConfig, HTSATFbankClassifier, load_htsat_folder, save_htsat_folder
from dass_distill.teachers.sslam import (SSLAMClassifier, SSLAMConfig, load_sslam_classifier,
                                         save_sslam_safetensors)
from dass_distill.teachers.sslam import front_end_for as sslam_front_end

# --------------------------------------------------------------------------- AST
AST_OPTIONS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
               "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range", "layer_norm_eps",
               "patch_size", "qkv_bias", "frequency_stride", "time_stride", "num_mel_bins")


def ast_make_config(defaults: dict, num_classes: int, target_length: int, overrides: dict) -> ASTConfig:
    return ast_config(defaults, num_classes, target_length, **overrides)


def ast_save_folder(model: ASTClassifier, folder: Path, front_end: KaldiFbank, label_ids: list[str],
                    label_names: list[str], extra: dict | None = None) -> Path:
    """A transformers AST folder labelled with the training labels (``ast:FOLDER`` loads it)."""
    cfg = model.config
    cfg.id2label = dict(enumerate(label_names))
    cfg.label2id = {n: i for i, n in enumerate(label_names)}
    cfg.label_ids = list(label_ids)
    return save_ast_folder(model, folder)


def ast_load_folder(folder: Path) -> tuple:
    teacher = ASTTeacher.from_folder(folder)
    return teacher.model, teacher.front_end, teacher.label_ids, teacher.label_names, teacher.model.config.to_dict()


def _released_source(kind: str, title: str, formats: str, path: Path, label_ids: list[str],
                     allow_pickle: bool) -> tuple:
    """The teacher a ``pretrained=`` checkpoint (or teacher YAML) loads as, refused in one line when it
    is not of ``kind``, and whether its head fits ``label_ids``: the same ids, or for a checkpoint
    that carries no names, the same class count."""
    spec = str(path) if path.suffix in (".yaml", ".yml") else f"{kind}:{path}"
    source = load_teacher(spec, allow_pickle=allow_pickle)
    if getattr(source, "kind", None) != kind:
        raise UserError(f"pretrained={path} is a {getattr(source, 'kind', 'ensemble')} teacher; an {title} model "
                        f"fine-tunes from an {title} checkpoint ({formats})")
    same_labels = (list(source.label_ids) == list(label_ids) if source.label_ids is not None
                   else source.num_classes == len(label_ids))
    return source, same_labels


def ast_init_from_released(model: ASTClassifier, path: Path, label_ids: list[str], allow_pickle: bool = False) -> bool:
    """Fine-tune a released AST (original ``.pth``, teacher YAML or transformers folder): every
    transformer weight, positions adapted to this model's grid, the head only for the same labels."""
    source, same_labels = _released_source("ast", "AST", "original .pth or transformers folder", path, label_ids,
                                           allow_pickle)
    done = init_from_pretrained_ast(model, source.model, str(path), keep_head=same_labels)
    return done["head"] == "kept"


def ast_init_from_pretraining(model: ASTClassifier, state: dict, source: str | Path) -> bool:
    """Fine-tune from an AST masked-patch pretraining run (SSAST): every transformer weight, the
    positions adapted from the pretraining grid as for a released AST, a new head (False)."""
    try:
        encoder, (fdim, tdim) = split_pretraining_state(state)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    kernel = encoder.get("ast.audio_spectrogram_transformer.embeddings.patch_embeddings.projection.weight")
    if kernel is None:
        raise CheckpointError(f"ast: {source} was pretrained with another model family (no AST patch projection)")
    patch = kernel.shape[-1]
    pretrained = ASTClassifier.from_config(ASTConfig.from_dict({
        **model.config.to_dict(), "num_mel_bins": fdim, "max_length": tdim, "frequency_stride": patch,
        "time_stride": patch}))
    pretrained.reset_classifier(0)
    try:
        pretrained.load_state_dict(encoder)
    except RuntimeError as e:
        raise CheckpointError(f"ast: {source} does not fit {model.config.hidden_size}-wide, "
                              f"{model.config.num_hidden_layers}-layer AST ({str(e).splitlines()[0]}); fine-tune the "
                              f"model that was pretrained") from None
    init_from_pretrained_ast(model, pretrained, str(source), keep_head=False)
    return False


AST_FAMILY = register_family(ModelFamily(
    name="ast", model_type="audio-spectrogram-transformer", description="teacher (AST, trainable)",
    config_class=ASTConfig, model_class=ASTClassifier, student=False, options=AST_OPTIONS,
    make_config=ast_make_config, build=ASTClassifier.from_config,
    front_end=lambda config, target_length: ast_front_end(config),
    save_folder=ast_save_folder, load_folder=ast_load_folder, init_from_released=ast_init_from_released,
    init_from_pretraining=ast_init_from_pretraining, stride_options=("frequency_stride", "time_stride"),
    graph_export=False, any_length=False,  # a fixed position table
))

def _register_ast(name: str, kwargs: dict) -> None:
    def defaults() -> dict:
        return dict(kwargs)
    defaults.__name__ = name
    register_model(AST_FAMILY)(defaults)


for _name, _kwargs in AST_CONFIGS.items():
    _register_ast(_name, _kwargs)
register_alias("ast", "ast_base")


# --------------------------------------------------------------------------- SSLAM
def sslam_make_config(defaults: dict, num_classes: int, target_length: int, overrides: dict) -> SSLAMConfig:
    return SSLAMConfig(**{**defaults, **overrides, "num_classes": num_classes, "target_length": target_length})


def sslam_save_folder(model: SSLAMClassifier, folder: Path, front_end: KaldiFbank, label_ids: list[str],
                      label_names: list[str], extra: dict | None = None) -> Path:
    """The Hugging Face layout of the EAT port (``sslam:FOLDER`` loads it), with the training labels."""
    save_sslam_safetensors(model, folder)
    config_path = Path(folder) / "config.json"
    config = json.loads(config_path.read_text())
    config.update(id2label={str(i): n for i, n in enumerate(label_names)}, label_ids=list(label_ids))
    config_path.write_text(json.dumps(config, indent=2))
    return Path(folder)


def sslam_load_folder(folder: Path) -> tuple:
    model, _ = load_sslam_classifier(folder)
    config = json.loads((Path(folder) / "config.json").read_text())
    n = model.config.num_classes
    names = [config.get("id2label", {}).get(str(i), f"class_{i}") for i in range(n)]
    return model.eval(), sslam_front_end(model.config), list(config.get("label_ids", names)), names, config


SSLAM_FAMILY = register_family(ModelFamily(
    name="sslam", model_type="eat", description="teacher (SSLAM/EAT ViT, trainable)",
    config_class=SSLAMConfig, model_class=SSLAMClassifier, student=False,
    options=("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "norm_eps"),
    make_config=sslam_make_config, build=lambda config: SSLAMClassifier(config).init_weights(),
    front_end=lambda config, target_length: sslam_front_end(config),
    save_folder=sslam_save_folder, load_folder=sslam_load_folder, graph_export=False, any_length=False,
))


@register_model(SSLAM_FAMILY)
def sslam_tiny() -> dict:
    """A 3-layer, 96-wide EAT ViT: a second teacher kind for the demo's ensembles (released: ViT-B)."""
    return dict(embed_dim=96, depth=3, num_heads=3)


# --------------------------------------------------------------------------- HTS-AT
HTSAT_OPTIONS = ("embed_dim", "depths", "num_heads", "window_size", "mlp_ratio", "qkv_bias", "patch_size",
                 "mel_bins", "spec_size", "ape", "drop_path_rate", "norm_eps")


def htsat_spec_size(mel_bins: int, target_length: int) -> int:
    """The smallest HTS-AT image side ``mel_bins * r`` (r a power of two, so every stage's grid halves
    into whole windows) whose folding holds ``target_length`` frames: ``spec_size * freq_ratio``."""
    r = 1
    while mel_bins * r * r < target_length:
        r *= 2
    return mel_bins * r


def htsat_make_config(defaults: dict, num_classes: int, target_length: int, overrides: dict) -> HTSATConfig:
    fields = {**defaults, **overrides, "num_classes": num_classes}
    if "patch_size" in overrides:
        fields["patch_stride"] = (fields["patch_size"], fields["patch_size"])
    mel = fields["mel_bins"]
    fields.setdefault("spec_size", htsat_spec_size(mel, target_length))
    fields["freq_ratio"] = fields["spec_size"] // mel
    if fields["spec_size"] * fields["freq_ratio"] < target_length:
        raise ValueError(f"spec_size {fields['spec_size']} folds {fields['spec_size'] * fields['freq_ratio']} "
                         f"frames, fewer than target_length {target_length}; leave spec_size unset to size it")
    return HTSATConfig(**fields)


HTSAT_FRONT_END = ("spectrogram_extractor.", "logmel_extractor.", "bn0.")  # the released waveform front end
HTSAT_HEAD = ("tscam_conv.", "head.")


def htsat_init_from_released(model: HTSATFbankClassifier, path: Path, label_ids: list[str],
                             allow_pickle: bool = False) -> bool:
    """Fine-tune from a released HTS-AT ``.ckpt`` (or an exported ``htsat`` folder): every Swin
    weight; the shifted-window masks are this model's own (its image may be smaller); the head
    only for the same labels. A released model's waveform front end is left out: this model reads
    the filterbank, so its patch embedding starts from weights that saw another log-mel (as AST's
    start from ImageNet's pixels)."""
    source, same_labels = _released_source("htsat", "HTS-AT", "released .ckpt or exported folder", path, label_ids,
                                           allow_pickle)
    skip = HTSAT_FRONT_END + (() if same_labels else HTSAT_HEAD)
    state = {k: v for k, v in source.model.state_dict().items()
             if not k.startswith(skip) and not k.endswith(HTSAT_DERIVED_BUFFERS)}
    own_buffers = tuple(k for k in model.state_dict() if k.endswith(HTSAT_DERIVED_BUFFERS))
    try:
        load_strict(model, state, "htsat", path, allow_missing=own_buffers + (() if same_labels else HTSAT_HEAD))
    except CheckpointError as e:
        raise CheckpointError(f"{e}; fine-tune the checkpoint's own size (the released HTS-AT is htsat_base)") from None
    return same_labels


HTSAT_FAMILY = register_family(ModelFamily(
    name="htsat", model_type="htsat", description="teacher (HTS-AT Swin on the filterbank, trainable)",
    config_class=HTSATConfig, model_class=HTSATFbankClassifier, student=False, options=HTSAT_OPTIONS,
    make_config=htsat_make_config, build=lambda config: HTSATFbankClassifier(config).init_weights(),
    front_end=lambda config, target_length: KaldiFbank(target_length=target_length, num_mel_bins=config.mel_bins),
    save_folder=save_htsat_folder, load_folder=load_htsat_folder, init_from_released=htsat_init_from_released,
    graph_export=False,
    any_length=False,  # a fixed image: clips longer than the target length are windowed
))


@register_model(HTSAT_FAMILY)
def htsat_tiny() -> dict:
    """Three Swin stages 48-96-192 wide on a 64-bin filterbank (2.4M parameters): a teacher that
    learns a few hundred clips from scratch (released HTS-AT: four stages, 96-768 wide)."""
    return dict(embed_dim=48, depths=(2, 2, 2), num_heads=(2, 4, 8), window_size=8, mel_bins=64)


@register_model(HTSAT_FAMILY)
def htsat_base() -> dict:
    """The released HTS-AT's architecture (Swin-T: depths 2-2-6-2, 96-768 wide), trained on the filterbank."""
    return dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(4, 8, 16, 32), window_size=8, mel_bins=64)
