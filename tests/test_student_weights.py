"""Released-weight layouts, built as random state dicts with the original key names."""

import pytest
import torch

from dass_distill.checkpoint_files import CheckpointError
from dass_distill.students import DASS, DassConfig, create_model, init_from_vmamba, load_dass_weights, load_weights

# Key names of VMamba's channel-first "v05_noz" model (the DASS backbone), one of each kind.
VMAMBA_KEYS = [
    "patch_embed.0.weight", "patch_embed.2.weight", "patch_embed.5.weight", "patch_embed.7.bias",
    "layers.0.blocks.0.norm.weight", "layers.0.blocks.0.op.in_proj.weight", "layers.0.blocks.0.op.conv2d.weight",
    "layers.0.blocks.0.op.x_proj_weight", "layers.0.blocks.0.op.dt_projs_weight", "layers.0.blocks.0.op.dt_projs_bias",
    "layers.0.blocks.0.op.A_logs", "layers.0.blocks.0.op.Ds", "layers.0.blocks.0.op.out_norm.weight",
    "layers.0.blocks.0.op.out_proj.weight", "layers.0.blocks.0.norm2.bias", "layers.0.blocks.0.mlp.fc1.weight",
    "layers.0.blocks.0.mlp.fc2.bias", "layers.0.downsample.1.weight", "layers.0.downsample.3.weight",
    "layers.3.blocks.1.op.A_logs", "classifier.norm.weight", "classifier.head.weight", "classifier.head.bias",
]


@pytest.fixture(scope="module")
def small_state():
    torch.manual_seed(0)
    state = create_model("dass_small", num_classes=527).state_dict()
    return {k: torch.randn_like(v) for k, v in state.items()}


def test_model_uses_vmamba_key_names(small_state):
    missing = [k for k in VMAMBA_KEYS if k not in small_state]
    assert not missing, missing
    assert not any("conv2d.bias" in k for k in small_state)  # DASS's depthwise conv has no bias


def _outputs_equal(a, b):
    x = torch.randn(1, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["original", "hf_port"])
def test_released_dass_small_layouts(tmp_path, small_state, layout):
    if layout == "original":  # DataParallel around DASS(v=VSSM)
        ckpt = {f"module.v.{k}": v for k, v in small_state.items()}
    else:  # Hugging Face port: dass.* and the head at the top
        ckpt = {(k.replace("classifier.head.", "head.") if k.startswith("classifier.head.") else f"dass.{k}"): v
                for k, v in small_state.items()}
    torch.save(ckpt, tmp_path / "dass.pth")
    model = load_dass_weights(create_model("dass_small"), tmp_path / "dass.pth")
    reference = create_model("dass_small")
    reference.load_state_dict(small_state)
    _outputs_equal(model, reference)


def test_released_weights_errors_name_the_key(tmp_path, small_state):
    ckpt = {f"module.v.{k}": v for k, v in small_state.items()}
    torch.save(ckpt, tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match=r"^dass student: .*small.pth has unexpected weight 'layers\.2\.blocks\.7\."):
        load_weights(DASS(DassConfig(depths=[2, 2, 7, 2])), tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match=r"weight 'classifier.head.weight' has shape \(527, 768\), the model "
                                              r"needs \(10, 768\)"):
        load_weights(create_model("dass_small", num_classes=10), tmp_path / "small.pth")
    partial = dict(list(ckpt.items())[:-5])
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"partial.pth lacks weight '.*' \(5 missing\)"):
        load_weights(create_model("dass_small"), tmp_path / "partial.pth")
    (tmp_path / "trunc.pth").write_bytes((tmp_path / "small.pth").read_bytes()[:4096])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_weights(create_model("dass_small"), tmp_path / "trunc.pth")


class Note:  # any Python object next to the tensors makes a file unsafe to unpickle
    pass


def test_students_and_teachers_share_the_checkpoint_reader(tmp_path, small_state):
    """Pickled files need the same opt-in, and missing keys read the same, for a student and a teacher."""
    from dass_distill.teachers import load_teacher
    from teacher_checkpoints import original_ast_state_dict

    ckpt = {"model": {f"module.v.{k}": v for k, v in small_state.items()}, "note": Note()}
    torch.save(ckpt, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match=r"^dass student: .*stores Python objects.*opt in \(allow_pickle"):
        load_weights(create_model("dass_small"), tmp_path / "pickled.pth")
    load_weights(create_model("dass_small"), tmp_path / "pickled.pth", allow_pickle=True)  # opted in: loads
    ast = original_ast_state_dict(dim=64, depth=1, classes=5)
    torch.save({**ast, "note": Note()}, tmp_path / "ast_pickled.pth")
    with pytest.raises(CheckpointError, match=r"^ast teacher: .*stores Python objects.*opt in \(allow_pickle"):
        load_teacher(f"ast:{tmp_path / 'ast_pickled.pth'}")


def test_vmamba_imagenet_init_sums_rgb_stem(tmp_path, small_state):
    rgb = dict(small_state)
    rgb["patch_embed.0.weight"] = torch.randn(48, 3, 3, 3)
    rgb["classifier.head.weight"] = torch.randn(1000, 768)
    rgb["classifier.head.bias"] = torch.randn(1000)
    torch.save({"model": rgb}, tmp_path / "vssm_tiny.pth")
    model = create_model("dass_small", num_classes=527)
    head_before = model.classifier.head.weight.clone()
    init_from_vmamba(model, tmp_path / "vssm_tiny.pth")
    torch.testing.assert_close(model.patch_embed[0].weight, rgb["patch_embed.0.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(model.layers[2].blocks[3].op.A_logs, small_state["layers.2.blocks.3.op.A_logs"])
    assert torch.equal(model.classifier.head.weight, head_before)  # the new task's head is kept
