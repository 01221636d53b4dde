"""AST (Gong et al., 2021) teacher on transformers' ``ASTForAudioClassification``.

Two checkpoint formats load:

* a transformers checkpoint folder: ``config.json`` (with ``id2label``; ``label_ids``
  holds the AudioSet mids when known), the weights (``model.safetensors``), and
  ``preprocessor_config.json`` in ASTFeatureExtractor's format, from which the front
  end takes ``max_length``, ``mean`` and ``std``;
* the original release's ``.pth`` file: a DataParallel state dict of the timm DeiT
  (``module.v.*``, fused ``attn.qkv``, the unused ImageNet ``head``/``head_dist``) and
  ``module.mlp_head.{0,1}.*``. The patch strides are solved from the position table's
  length, so the 10/10, 12/12, 14/14 and 16/16 releases all load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from transformers import ASTConfig, ASTForAudioClassification

from dass_distill.checkpoint_files import CheckpointError, load_strict, read_checkpoint, state_dict_in, strip_prefix
from dass_distill.frontend import KaldiFbank

from .base import FbankTeacher, sha256_of, wrong_kind_hint

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# Named AST sizes. ast_base is the released AudioSet model's layout (DeiT-B, stride 10).
AST_CONFIGS: dict[str, dict] = {
    "ast_tiny": dict(hidden_size=96, num_hidden_layers=3, num_attention_heads=3, intermediate_size=384,
                     frequency_stride=16, time_stride=16, hidden_dropout_prob=0.1),
    "ast_small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "ast_base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


class ASTClassifier(nn.Module):
    """Filterbank (B, T, F) -> logits (B, C): the trainable part of an AST teacher."""

    def __init__(self, ast: ASTForAudioClassification) -> None:
        super().__init__()
        self.ast = ast

    @classmethod
    def from_config(cls, config: ASTConfig) -> "ASTClassifier":
        return cls(ASTForAudioClassification(config))

    @property
    def config(self) -> ASTConfig:
        return self.ast.config

    def get_classifier(self) -> nn.Linear:
        """The output layer (timm's name), e.g. to re-initialise its bias."""
        return self.ast.classifier.dense

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.ast(input_values=fbank).logits

    # Masked-patch pretraining (SSAST) reaches into the encoder through these three.
    def patch_layout(self) -> dict:
        """Patch size, strides, width and input size, in the students' names."""
        c = self.config
        return dict(patch_size=c.patch_size, fstride=c.frequency_stride, tstride=c.time_stride,
                    embed_dim=c.hidden_size, num_mel_bins=c.num_mel_bins, target_length=c.max_length)

    def patchify(self, fbank: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, T, F) -> (B, N, D) patch tokens (before positions) and their (F, T) grid."""
        emb = self.ast.audio_spectrogram_transformer.embeddings
        return emb.patch_embeddings(fbank), emb.get_shape(self.config)

    def encode_patches(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N, D) patch tokens -> (B, N, D) outputs at the patches (class and distillation tokens
        left out); what the model computes between its patch projection and its pooling."""
        encoder = self.ast.audio_spectrogram_transformer
        emb = encoder.embeddings
        if tuple(grid) != tuple(emb.get_shape(self.config)):
            raise ValueError(f"AST's position table fits a {emb.get_shape(self.config)} grid, got {tuple(grid)}")
        B = tokens.shape[0]
        x = torch.cat([emb.cls_token.expand(B, -1, -1), emb.distillation_token.expand(B, -1, -1), tokens], dim=1)
        x = emb.dropout(x + emb.position_embeddings)
        for layer in encoder.layers:
            x = layer(x, None)
        return encoder.layernorm(x)[:, 2:]

    def reset_classifier(self, num_classes: int) -> None:
        """timm's idiom; only ``0`` (no classifier, for pretraining) is supported."""
        if num_classes != 0:
            raise ValueError("an AST's classifier is set by its config (num_labels); reset_classifier takes only 0")
        self.ast.classifier = nn.Identity()


def ast_config(size: str | dict, num_classes: int, target_length: int = 1024, label_ids: list[str] | None = None,
               label_names: list[str] | None = None, **overrides) -> ASTConfig:
    """An ``ASTConfig`` for a named size (``ast_tiny``, ``ast_small``, ``ast_base``) or a dict of
    ``ASTConfig`` sizes, with ``overrides`` on top."""
    if isinstance(size, str) and size not in AST_CONFIGS:
        raise KeyError(f"unknown AST size '{size}'; known: {', '.join(AST_CONFIGS)}")
    base = AST_CONFIGS[size] if isinstance(size, str) else size
    names = label_names or [f"class_{i}" for i in range(num_classes)]
    # layer_norm_eps: the original AST (timm DeiT) value; transformers defaults to 1e-12
    kwargs = {"num_mel_bins": 128, "layer_norm_eps": 1e-6, **base, **overrides}
    return ASTConfig(
        max_length=target_length,
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        label_ids=list(label_ids or names),
        **kwargs,
    )


def front_end_for(config: ASTConfig) -> KaldiFbank:
    return KaldiFbank(target_length=config.max_length, num_mel_bins=config.num_mel_bins)


def preprocessor_config(front_end: KaldiFbank) -> dict:
    """transformers' ASTFeatureExtractor fields, so the folder also loads there."""
    return {
        "feature_extractor_type": "ASTFeatureExtractor",
        "feature_size": 1,
        "sampling_rate": front_end.sampling_rate,
        "num_mel_bins": front_end.num_mel_bins,
        "max_length": front_end.target_length,
        "do_normalize": True,
        "mean": front_end.mean,
        "std": front_end.std,
        "padding_value": 0.0,
        "return_attention_mask": False,
    }


def save_ast_folder(model: ASTClassifier, folder: str | Path) -> Path:
    """Write a trained AST as a teacher folder (transformers layout + preprocessor config)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.ast.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(front_end_for(model.config)), indent=2))
    return folder


class ASTTeacher(FbankTeacher):
    """AST with its Kaldi-fbank front end, from a transformers folder or a config."""

    kind = "ast"

    # The original runs under fp16 autocast on CUDA; bf16 keeps fp32's range.
    cuda_dtype = torch.bfloat16

    def __init__(self, model: ASTClassifier, front_end: KaldiFbank, name: str = "ast", labelled: bool = True) -> None:
        cfg = model.config
        names = [cfg.id2label[i] for i in range(cfg.num_labels)]
        ids = list(getattr(cfg, "label_ids", None) or names)
        super().__init__(name, front_end.sampling_rate, cfg.num_labels, ids if labelled else None,
                         names if labelled else None)
        self.model = model.eval()
        self.front_end = front_end

    @classmethod
    def from_config(cls, config: ASTConfig, name: str = "ast") -> "ASTTeacher":
        return cls(ASTClassifier.from_config(config), front_end_for(config), name)

    @classmethod
    def from_folder(cls, folder: str | Path, name: str = "ast") -> "ASTTeacher":
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"AST teacher: {folder} is not a folder; pass a transformers AST checkpoint folder")
        weights = [folder / w for w in WEIGHT_FILES if (folder / w).is_file()]
        if not (folder / "config.json").is_file() or not weights:
            raise CheckpointError(
                f"AST teacher: {folder} needs config.json and model.safetensors (a transformers checkpoint folder)"
            )
        try:
            config = ASTConfig.from_pretrained(folder)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"AST teacher: {folder}/config.json is not an AST config ({e})") from None
        if config.model_type != "audio-spectrogram-transformer":
            raise CheckpointError(f"AST teacher: {folder} holds a '{config.model_type}' model, not an AST")
        try:
            hf, info = ASTForAudioClassification.from_pretrained(folder, output_loading_info=True)
        except Exception as e:  # transformers raises many types for bad weights
            raise CheckpointError(f"AST teacher: cannot load weights from {folder} ({e})") from None
        bad = info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]
        if bad:
            raise CheckpointError(f"AST teacher: {weights[0]} does not match its config; first offending key: {sorted(bad)[0]}")
        model = ASTClassifier(hf)
        front_end = front_end_for(config)
        prep = folder / "preprocessor_config.json"
        if prep.is_file():
            p = json.loads(prep.read_text())
            front_end = KaldiFbank(
                sampling_rate=p.get("sampling_rate", 16000),
                num_mel_bins=p.get("num_mel_bins", config.num_mel_bins),
                target_length=p.get("max_length", config.max_length),
                mean=p.get("mean", front_end.mean),
                std=p.get("std", front_end.std),
            )
        teacher = cls(model, front_end, name)
        teacher.checkpoint = str(folder.resolve())
        teacher.checkpoint_sha256 = sha256_of(weights)
        return teacher

    @classmethod
    def from_pth(cls, path: str | Path, name: str = "ast", input_tdim: int = 1024, num_heads: int | None = None,
                 allow_pickle: bool = False) -> "ASTTeacher":
        """Load an original AST release (``audioset_10_10_0.4593.pth`` and the like)."""
        path = Path(path)
        sd = state_dict_in(read_checkpoint(path, "ast teacher", allow_pickle), "ast teacher", path)
        sd = strip_prefix(sd, ("module.",))
        if "v.pos_embed" not in sd or "mlp_head.1.weight" not in sd:
            raise CheckpointError(f"ast teacher: {path} is not an original AST checkpoint (no 'module.v.pos_embed' "
                                  f"or 'module.mlp_head.1.weight'){wrong_kind_hint(list(sd), 'ast')}")
        config = original_ast_config(sd, path, input_tdim, num_heads)
        model = ASTClassifier.from_config(config)
        # timm's DeiT blocks use eps 1e-6, but AST's own mlp_head LayerNorm keeps torch's 1e-5
        model.ast.classifier.layernorm.eps = 1e-5
        converted = convert_original_ast(sd, model, path)
        load_strict(model.ast, converted, "ast teacher", path, hint=wrong_kind_hint(list(converted), "ast"))
        teacher = cls(model, front_end_for(config), name, labelled=False)
        teacher.checkpoint = str(path.resolve())
        teacher.checkpoint_sha256 = sha256_of([path])
        return teacher

    def short_clip_rule(self) -> str:
        return f"fbank zero-padded to {self.front_end.target_length} frames before normalisation (as the original AST)"


def _solve_strides(num_patches: int, patch: int, fdim: int, tdim: int) -> tuple[int, int] | None:
    """(frequency, time) stride giving ``num_patches`` patches; equal strides preferred."""
    def count(fs: int, ts: int) -> int:
        return ((fdim - patch) // fs + 1) * ((tdim - patch) // ts + 1)

    for s in range(1, patch + 1):
        if count(s, s) == num_patches:
            return s, s
    found = [(fs, ts) for fs in range(1, patch + 1) for ts in range(1, patch + 1) if count(fs, ts) == num_patches]
    return found[0] if len(found) == 1 else None


def original_ast_config(sd: dict[str, torch.Tensor], path: Path, input_tdim: int = 1024,
                        num_heads: int | None = None) -> ASTConfig:
    """The ``ASTConfig`` of an original AST state dict, read from its shapes."""
    for key in ("v.patch_embed.proj.weight", "v.blocks.0.mlp.fc1.weight"):
        if key not in sd:
            raise CheckpointError(f"ast teacher: {path} lacks weight 'module.{key}'")
    hidden, _, patch, _ = sd["v.patch_embed.proj.weight"].shape
    num_patches = sd["v.pos_embed"].shape[1] - 2  # cls + distillation tokens
    num_mel_bins = 128
    strides = _solve_strides(num_patches, patch, num_mel_bins, input_tdim)
    if strides is None:
        raise CheckpointError(
            f"ast teacher: {path} has {num_patches} patch positions, which no stride gives for "
            f"{num_mel_bins}x{input_tdim} inputs; set 'input_tdim' in the teacher YAML to the length it was trained on"
        )
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("v.blocks."))
    if num_heads is None:
        if hidden % 64:
            raise CheckpointError(f"ast teacher: {path} has width {hidden}, not a multiple of ViT's 64-wide heads; "
                                  "set 'num_heads' in the teacher YAML")
        num_heads = hidden // 64
    num_classes = sd["mlp_head.1.weight"].shape[0]
    names = [f"class_{i}" for i in range(num_classes)]
    return ASTConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=num_heads,
        intermediate_size=sd["v.blocks.0.mlp.fc1.weight"].shape[0], patch_size=patch,
        frequency_stride=strides[0], time_stride=strides[1], max_length=input_tdim, num_mel_bins=num_mel_bins,
        layer_norm_eps=1e-6, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )


_DEIT_HEADS = ("v.head.weight", "v.head.bias", "v.head_dist.weight", "v.head_dist.bias")


def original_ast_key_map(layers: int) -> dict[str, list[str]]:
    """Original AST key -> transformers 5.x key(s); ``attn.qkv`` splits into q, k, v."""
    pre = "audio_spectrogram_transformer."
    keys = {
        "v.cls_token": [pre + "embeddings.cls_token"],
        "v.dist_token": [pre + "embeddings.distillation_token"],
        "v.pos_embed": [pre + "embeddings.position_embeddings"],
        "v.norm.weight": [pre + "layernorm.weight"],
        "v.norm.bias": [pre + "layernorm.bias"],
        "mlp_head.0.weight": ["classifier.layernorm.weight"],
        "mlp_head.0.bias": ["classifier.layernorm.bias"],
        "mlp_head.1.weight": ["classifier.dense.weight"],
        "mlp_head.1.bias": ["classifier.dense.bias"],
    }
    renames = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.o_proj",
               "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for kind in ("weight", "bias"):
        keys[f"v.patch_embed.proj.{kind}"] = [pre + f"embeddings.patch_embeddings.projection.{kind}"]
        for i in range(layers):
            src, dst = f"v.blocks.{i}.", f"{pre}layers.{i}."
            keys[f"{src}attn.qkv.{kind}"] = [f"{dst}attention.{n}.{kind}" for n in ("q_proj", "k_proj", "v_proj")]
            for old, new in renames.items():
                keys[f"{src}{old}.{kind}"] = [f"{dst}{new}.{kind}"]
    return keys


def convert_original_ast(sd: dict[str, torch.Tensor], model: ASTClassifier, path: Path) -> dict[str, torch.Tensor]:
    """Original (timm DeiT + mlp_head) state dict -> transformers keys, checked key by key in the
    original names: the unused ImageNet DeiT heads are dropped, anything else must match."""
    key_map = original_ast_key_map(model.config.num_hidden_layers)
    missing = [k for k in key_map if k not in sd]
    if missing:
        raise CheckpointError(f"ast teacher: {path} lacks weight 'module.{missing[0]}' ({len(missing)} missing)")
    unexpected = [k for k in sd if k not in key_map and k not in _DEIT_HEADS]
    if unexpected:
        raise CheckpointError(f"ast teacher: {path} has unexpected weight 'module.{unexpected[0]}' "
                              f"({len(unexpected)} unexpected)")
    own = model.ast.state_dict()
    out = {}
    for src, dsts in key_map.items():
        parts = sd[src].chunk(3, dim=0) if len(dsts) == 3 else (sd[src],)
        for dst, part in zip(dsts, parts):
            if len(parts) == 3 and sd[src].shape[0] % 3 or part.shape != own[dst].shape:
                raise CheckpointError(f"ast teacher: {path} weight 'module.{src}' has shape {tuple(sd[src].shape)}, "
                                      f"which does not fit the model its other weights describe")
            out[dst] = part
    return out
