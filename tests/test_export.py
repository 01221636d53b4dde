"""Export artefacts of a student: the Hugging Face folder, ONNX and torch.export files, their
self-checks, running them through predict / evaluate, and the errors a user can cause."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from dass_distill.errors import UserError
from helpers import cli

SR = 16000


@pytest.fixture(scope="module")
def exported(student_dir, tmp_path_factory):
    """``dass-distill export`` of the folder with every format (one capture serves both graphs)."""
    out = tmp_path_factory.mktemp("exported") / "model"
    proc = cli("export", student_dir, "--out", out, "--format", "onnx,pt2")
    return out, proc.stderr + proc.stdout


def _wav(path, seconds: float, rate: int = SR, channels: int = 1, seed: int = 0):
    from dass_distill.data.synth import render_clip

    wave = render_clip(np.random.default_rng(seed), seconds, rate, num_events=2).waveform
    sf.write(str(path), np.repeat(wave[:, None], channels, axis=1), rate)
    return path


# --------------------------------------------------------------------------- export
def test_export_writes_and_checks_every_format(exported):
    out, log = exported
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "model.onnx", "model.pt2",
                 "modeling_dass_distill.py"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    # transformers: the folder loaded through transformers and its own code, checked like the other formats
    assert set(config["exports"]) == {"hf", "transformers", "onnx", "pt2"}
    assert config["exports"]["transformers"]["file"] == "modeling_dass_distill.py"
    for fmt, entry in config["exports"].items():
        # random inputs at two durations and a real (rendered) clip, all within tolerance
        assert entry["checked_on"] == ["random", "synthetic 4 s scene"], fmt
        assert 0 <= entry["max_abs_diff"] <= entry["atol"] == 1e-4, fmt
    assert config["dass_distill_format"] == 1
    assert "150" in log and "376" in log and "max |logit diff|" in log  # both checked durations are reported
    card = (out / "README.md").read_text()
    assert "## Files and their checks" in card and "model.onnx" in card and "onnxruntime" in card


def test_onnx_file_is_plain_onnx_with_dynamic_axes(exported):
    import onnx

    model = onnx.load(str(exported[0] / "model.onnx"))
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}  # no custom ops
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in dims] == [True, True, False] and dims[2].dim_value == 128
    assert model.graph.input[0].name == "fbank" and model.graph.output[0].name == "logits"


@pytest.mark.parametrize("backend", ["onnx", "pt2"])
def test_graph_backends_match_the_weights_on_real_audio(exported, tmp_path, backend):
    from dass_distill.data.audio import read_audio
    from dass_distill.inference import load_tagger

    ref = load_tagger(exported[0])
    graph = load_tagger(exported[0], backend)
    assert graph.kind == f"dass-{backend}" and graph.label_names == ref.label_names
    # any rate and channel count, lengths far from the 150 frames the graph was captured at
    for seconds, rate, channels in ((1.0, SR, 1), (7.3, 44100, 2), (31.0, 22050, 1)):
        wave = read_audio(_wav(tmp_path / f"{seconds}.wav", seconds, rate, channels), SR)
        torch.testing.assert_close(graph.scores(wave), ref.scores(wave), atol=1e-5, rtol=0)


def test_predict_and_evaluate_run_the_graph_files(exported, tmp_path, synth_data):
    out = exported[0]
    long = _wav(tmp_path / "long.wav", 23.0, seed=4)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
    results = {}
    for backend in ("torch", "onnx"):
        pred = tmp_path / f"{backend}.json"
        proc = cli("predict", out, broken, long, "--backend", backend, "--output", pred, check=False)
        assert proc.returncode == 1 and "unreadable audio" in proc.stderr  # the good file is still tagged
        results[backend] = json.loads(pred.read_text())[str(long)]
    assert len(results["onnx"]["segments"]) == 4
    for a, b in zip(results["torch"]["segments"], results["onnx"]["segments"]):
        assert [t["label"] for t in a["tags"]] == [t["label"] for t in b["tags"]]
        np.testing.assert_allclose([t["score"] for t in a["tags"]], [t["score"] for t in b["tags"]], atol=1e-5)

    metrics = {}
    for backend in ("torch", "pt2"):
        cli("evaluate", out, "--data", synth_data["eval_manifest"], "--backend", backend,
            "--output", tmp_path / f"eval_{backend}.json")
        metrics[backend] = json.loads((tmp_path / f"eval_{backend}.json").read_text())
    assert metrics["pt2"]["clips"] == 12 and metrics["pt2"]["mAP"] == pytest.approx(metrics["torch"]["mAP"], abs=1e-6)


def test_export_adds_graph_files_to_an_exported_folder_in_place(student_dir, tmp_path):
    import shutil

    from dass_distill.export import export_run

    folder = tmp_path / "model"
    shutil.copytree(student_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    earlier = {"file": "model.safetensors", "torch": "2.0", "max_abs_diff": 0.0, "atol": 1e-4, "checked_on": ["random"]}
    (folder / "config.json").write_text(json.dumps({**config, "exports": {"hf": earlier}}))
    before = (folder / "model.safetensors").read_bytes()
    report = export_run(folder, folder, formats=["pt2"])
    assert (folder / "model.pt2").is_file() and (folder / "model.safetensors").read_bytes() == before
    assert {c.format for c in report.checks} == {"pt2"} and len(report.checks) == 3
    exports = json.loads((folder / "config.json").read_text())["exports"]
    # the earlier hf record is kept as it was (not re-stamped: this run did not check the weights)
    assert set(exports) == {"hf", "pt2"} and exports["hf"] == earlier


def test_exporting_over_a_folder_removes_graph_files_of_other_weights(exported, student_dir, tmp_path):
    import shutil

    from dass_distill.export import export_run

    out = tmp_path / "model"
    shutil.copytree(exported[0], out)  # holds model.onnx / model.pt2 from an earlier export
    messages = []
    export_run(student_dir, out, log=messages.append)  # hf only
    assert not (out / "model.onnx").exists() and not (out / "model.pt2").exists()
    assert sum("removed" in m for m in messages) == 2
    assert set(json.loads((out / "config.json").read_text())["exports"]) == {"hf", "transformers"}


def test_export_fails_and_removes_an_artefact_outside_tolerance(student_dir, tmp_path, monkeypatch):
    import dass_distill.export as export

    # The folder's transformers code also runs a pure-torch scan (~1e-7 off too): made exact here, so the
    # graph file is the one that fails.
    monkeypatch.setattr(export, "_load_with_transformers", lambda folder: (export.load_tagger(folder).module,
                                                                           export.load_tagger(folder).featurize))
    # The graph runs the pure-torch scan, eager runs the fused kernel: ~1e-7 apart, never 0.
    with pytest.raises(UserError, match=r"pt2 export check failed, model.pt2 removed: random \(150 frames\) differs by"):
        export.export_run(student_dir, tmp_path / "out", formats=["pt2"], atol=1e-12)
    assert not (tmp_path / "out" / "model.pt2").exists()


def test_export_fails_when_the_folder_disagrees_under_transformers(student_dir, tmp_path):
    from dass_distill.export import export_run

    with pytest.raises(UserError, match=r"loaded by transformers \(its modeling_dass_distill.py\) differs from the "
                                        r"checkpoint on random \(150 frames\)"):
        export_run(student_dir, tmp_path / "out", atol=1e-12)


# --------------------------------------------------------------------------- errors
def test_bad_formats_and_backends_are_user_errors(student_dir):
    from dass_distill.export import parse_formats
    from dass_distill.inference import load_tagger

    assert parse_formats(["onnx", "pt2,hf"]) == ["hf", "onnx", "pt2"]
    with pytest.raises(UserError, match="unknown export format 'torchscript'; choose from hf, onnx, pt2"):
        parse_formats(["torchscript"])
    with pytest.raises(UserError, match="unknown backend 'tflite'"):
        load_tagger(student_dir, "tflite")
    with pytest.raises(UserError, match="has no model.onnx; add it with 'dass-distill export"):
        load_tagger(student_dir, "onnx")


def test_damaged_or_foreign_model_folders_are_one_line_errors(student_dir, tmp_path):
    import shutil

    from dass_distill.inference import load_tagger

    def copy(name):
        folder = tmp_path / name
        shutil.copytree(student_dir, folder)
        return folder

    newer = copy("newer")
    config = json.loads((newer / "config.json").read_text())
    (newer / "config.json").write_text(json.dumps({**config, "dass_distill_format": 99, "dass_distill_version": "9.0"}))
    with pytest.raises(UserError, match="exported by dass-distill 9.0 in folder format 99; .* upgrade dass-distill"):
        load_tagger(newer)

    bad_json = copy("bad_json")
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="config.json is not valid JSON"):
        load_tagger(bad_json)

    truncated = copy("truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="model.safetensors cannot be read"):
        load_tagger(truncated)

    other = copy("other_size")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "dims": [d * 2 for d in config["dims"]]}))
    with pytest.raises(UserError, match="model.safetensors does not match config.json"):
        load_tagger(other)

    no_fe = copy("no_fe")
    (no_fe / "preprocessor_config.json").unlink()
    with pytest.raises(UserError, match="has no preprocessor_config.json"):
        load_tagger(no_fe)

    garbage = copy("garbage")
    (garbage / "model.onnx").write_bytes(b"\x00not an onnx model")
    (garbage / "model.pt2").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(UserError, match="model.onnx is not a loadable ONNX model"):
        load_tagger(garbage, "onnx")
    with pytest.raises(UserError, match="model.pt2 cannot be loaded by torch"):
        load_tagger(garbage, "pt2")


def test_missing_onnx_runtime_names_the_extra(exported, monkeypatch):
    from dass_distill.inference import load_tagger

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(UserError, match=r"onnxruntime missing\): install the ONNX extra: pip install 'dass-distill\[onnx\]'"):
        load_tagger(exported[0], "onnx")


def test_graph_backends_need_only_the_configs_beside_the_graph(exported, tmp_path):
    import shutil

    from dass_distill.inference import load_tagger

    folder = tmp_path / "onnx_only"
    folder.mkdir()
    for name in ("config.json", "preprocessor_config.json", "model.onnx"):
        shutil.copy(exported[0] / name, folder / name)
    tagger = load_tagger(folder, "onnx")  # no model.safetensors: a deployment that ships the graph only
    wave = torch.zeros(SR * 3)
    torch.testing.assert_close(tagger.scores(wave), load_tagger(exported[0]).scores(wave), atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="has no model.safetensors"):
        load_tagger(folder)
