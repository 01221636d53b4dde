import json

import numpy as np
import pytest
import torch

from dass_distill.teachers import ASTTeacher, CheckpointError, KaldiFbank, ast_config, load_teacher, save_ast_folder


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    torch.manual_seed(0)
    config = ast_config("ast_tiny", 4, target_length=200, label_ids=["/m/a", "/m/b", "/m/c", "/m/d"],
                        label_names=["A", "B", "C", "D"])
    teacher = ASTTeacher.from_config(config)
    folder = tmp_path_factory.mktemp("ast")
    save_ast_folder(teacher.model, folder)
    return teacher, folder


def test_front_end_matches_transformers_feature_extractor():
    """Our AST front end against transformers' ASTFeatureExtractor (a separate implementation)."""
    from transformers import ASTFeatureExtractor

    rng = np.random.default_rng(0)
    wave = (rng.standard_normal(16000 * 2) * 0.1).astype(np.float32)
    ours = KaldiFbank(target_length=300)(torch.from_numpy(wave)[None])[0]
    hf = ASTFeatureExtractor(max_length=300)(wave, sampling_rate=16000, return_tensors="pt")["input_values"][0]
    torch.testing.assert_close(ours, hf, rtol=0, atol=2e-4)


def test_front_end_pads_short_and_cuts_long():
    fe = KaldiFbank(target_length=100)
    out = fe([torch.randn(8000) * 0.1, torch.randn(40000) * 0.1])
    assert out.shape == (2, 100, 128)
    # 0.5 s -> 48 frames; the rest is the normalised zero padding
    torch.testing.assert_close(out[0, 48:], torch.full((52, 128), -fe.mean / (2 * fe.std)))


def test_folder_round_trip_gives_same_logits(teacher_folder):
    teacher, folder = teacher_folder
    loaded = load_teacher(f"ast:{folder}")
    waves = [torch.randn(16000) * 0.1, torch.randn(24000) * 0.1]
    torch.testing.assert_close(loaded.logits(waves), teacher.logits(waves))
    assert loaded.label_ids == ["/m/a", "/m/b", "/m/c", "/m/d"] and loaded.label_names[2] == "C"
    ident = loaded.identity()
    assert ident["kind"] == "ast" and len(ident["checkpoint_sha256"]) == 64
    assert ident["front_end"]["target_length"] == 200 and ident["front_end"]["num_mel_bins"] == 128
    # batches of different composition give the same per-clip logits (no cross-clip padding)
    torch.testing.assert_close(loaded.logits(waves[1:]), loaded.logits(waves)[1:], rtol=1e-5, atol=1e-6)


def test_teacher_yaml_spec(teacher_folder, tmp_path):
    _, folder = teacher_folder
    (tmp_path / "t.yaml").write_text(f"kind: ast\npath: {folder}\nname: my_ast\n")
    assert load_teacher(str(tmp_path / "t.yaml")).name == "my_ast"


def test_checkpoint_errors(teacher_folder, tmp_path):
    _, folder = teacher_folder
    with pytest.raises(CheckpointError, match="not found"):
        load_teacher(f"ast:{tmp_path / 'missing'}")
    with pytest.raises(CheckpointError, match="KIND:PATH"):
        load_teacher("just-a-path")
    with pytest.raises(CheckpointError, match="unknown teacher kind 'htsat2'"):
        load_teacher(f"htsat2:{folder}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="needs config.json and model.safetensors"):
        load_teacher(f"ast:{tmp_path / 'empty'}")
    # weights that do not fit the config: name the first offending key
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_size"], cfg["intermediate_size"] = 48, 96
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="AST teacher"):
        load_teacher(f"ast:{bad}")
    # truncated weights
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    (trunc / "config.json").write_text((folder / "config.json").read_text())
    (trunc / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot load weights"):
        load_teacher(f"ast:{trunc}")
