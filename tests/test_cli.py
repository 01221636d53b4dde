"""End to end through the command line: synth -> train teacher -> export -> cache -> train
student -> export -> predict / evaluate, plus the one-line errors a user sees."""

import json

import pytest

from helpers import cli


TRAIN = ["data.target_length=150", "data.num_workers=0", "optim.batch_size=4", "optim.warmup_steps=1",
         "augment.time_mask=20", "data.memoize_features=true"]


@pytest.mark.slow
def test_pipeline_through_cli(tmp_path):
    data = tmp_path / "data"
    cli("synth", "--out", data, "--num-train", 16, "--num-eval", 12, "--duration", 1.5, "--seed", 1)
    train, evl = data / "train.json", data / "eval.json"

    cli("train", "--model", "ast_tiny", "--output-dir", tmp_path / "teacher_run", f"data.train={train}",
        f"data.eval={evl}", "optim.max_steps=2", *TRAIN)
    cli("export", tmp_path / "teacher_run", "--out", tmp_path / "teacher")

    # One corrupt clip in the manifest: skipped, counted, listed, and recorded in the cache.
    doc = json.loads(train.read_text())
    (data / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
    doc["data"].append({"wav": "broken.wav", "labels": doc["data"][0]["labels"]})
    with_bad = data / "train_with_bad.json"
    with_bad.write_text(json.dumps(doc))
    proc = cli("cache", "--teacher", f"ast:{tmp_path / 'teacher'}", "--data", with_bad, "--out", tmp_path / "c.h5",
               "--num-workers", 0)
    assert "1 clip(s) could not be read" in proc.stderr and "broken" in proc.stderr
    info = cli("cache-info", tmp_path / "c.h5").stderr
    assert "checkpoint_sha256" in info and "ast" in info

    cli("train", "--model", "dass_tiny", "--output-dir", tmp_path / "student_run", f"data.train={train}",
        f"data.eval={evl}", f"distill.cache={tmp_path / 'c.h5'}", "optim.max_steps=2", *TRAIN)
    summary = json.loads((tmp_path / "student_run" / "summary.json").read_text())
    assert summary["distilled"] and summary["steps"] == 2
    cli("export", tmp_path / "student_run", "--out", tmp_path / "student")
    for f in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"):
        assert (tmp_path / "student" / f).is_file(), f

    clip = sorted((data / "audio" / "eval").glob("*.wav"))[0]
    out = tmp_path / "pred.json"
    proc = cli("predict", tmp_path / "student", clip, "--top-k", 3, "--output", out)
    pred = json.loads(out.read_text())[str(clip)]
    assert len(pred) == 3 and all(0 <= p["score"] <= 1 for p in pred)
    proc = cli("evaluate", tmp_path / "student", "--data", evl, "--output", tmp_path / "eval.json")
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert 0 < metrics["mAP"] <= 1 and metrics["clips"] == 12

    # predict on a batch with a bad file: the good file is still tagged, exit status 1
    proc = cli("predict", tmp_path / "student", data / "broken.wav", clip, check=False)
    assert proc.returncode == 1 and "unreadable audio" in proc.stderr and "score" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["cache", "--teacher", "ast:/no/such/folder", "--data", "{train}", "--out", "{tmp}/x.h5"], "checkpoint /no/such/folder not found"),
        (["cache", "--teacher", "bert:{tmp}", "--data", "{train}", "--out", "{tmp}/x.h5"], "unknown teacher kind 'bert'"),
        (["cache", "--teacher", "ast:{tmp}", "--data", "{tmp}/none.json", "--out", "{tmp}/x.h5"], "manifest .*none.json not found"),
        (["train", "--model", "dass_tiny", "data.train={train}", "optim.bogus=1"], "optim.bogus: Extra inputs"),
        (["export", "{tmp}", "--out", "{tmp}/e"], "not a training run folder|neither a training run"),
        (["predict", "{tmp}", "x.wav"], "not an exported model folder"),
        (["cache-info", "{train}"], "not an HDF5|not a dass-distill|cannot open|not a valid"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, synth_data, args, message):
    import re

    fmt = {"train": synth_data["train_manifest"], "tmp": tmp_path}
    proc = cli(*[a.format(**fmt) for a in args], check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and re.search(message, lines[0]), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_models_lists_parameter_counts():
    out = cli("models").stderr
    assert "dass_small" in out and "29.88 M" in out and "48.65 M" in out and "ast_base" in out


def test_user_errors_print_plain_text_and_bugs_keep_their_traceback(capsys):
    import typer

    from dass_distill.cli import user_errors
    from dass_distill.errors import UserError
    from dass_distill.logit_cache import CacheFormatError
    from dass_distill.data.audio import AudioError
    from dass_distill.students import ModelFolderError
    from dass_distill.teachers import CheckpointError

    for error in (CheckpointError, ModelFolderError, CacheFormatError, AudioError):
        assert issubclass(error, UserError)  # one base: the CLI catches only it

    @user_errors
    def fails(exc):
        raise exc

    with pytest.raises(typer.Exit) as stop:
        fails(UserError("runs/[seed 1]/model is missing; pip install 'dass-distill[onnx]'"))
    assert stop.value.exit_code == 2
    assert "error: runs/[seed 1]/model is missing; pip install 'dass-distill[onnx]'" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):  # not a user error: a bug somewhere, shown as one
        fails(FileNotFoundError("/deep/inside"))
