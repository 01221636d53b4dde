"""A small real-speech keyword set for recipe benchmarks, spoken by espeak-ng.

Ten keywords (as in Speech Commands), single label per clip, 2 s clips at 16 kHz: the
word at a random position, over noise at a random SNR and level. Speakers are espeak-ng
voice x variant pairs with their own pitch and rate; the evaluation speakers are
disjoint from the training speakers, so the task is to recognise words, not voices.

    python benchmarks/spoken_words.py --out data/spoken_words      # 480 train / 200 eval clips
    python benchmarks/spoken_words.py --out data/spoken_words --unlabelled 2400

``--unlabelled N`` adds N clips of other words (none of the ten) by the training speakers,
listed in ``unlabelled.txt``, and ``pretrain.txt``: those and the training clips, the audio
for masked-patch pretraining (``dass-distill pretrain data.train=.../pretrain.txt``). They
are made after the labelled clips, so those stay the same.

Needs the ``espeak-ng`` program (Debian/Ubuntu: ``apt-get install espeak-ng``). The
layout is the one ``dass-distill synth`` writes (``train.json``, ``eval.json``,
``class_labels_indices.csv``, ``audio/{train,eval}/*.wav``), so every command reads it.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from dass_distill.data.manifest import Clip, LabelMap, write_json_manifest

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
          "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3",
            "klatt4")
SAMPLE_RATE = 16000
#: Words of the unlabelled pool: common English words, none of them a keyword.
OTHER_WORDS = ("bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow", "zero", "one",
               "two", "three", "four", "five", "six", "seven", "eight", "nine", "forward", "backward", "follow",
               "learn", "visual", "water", "table", "green", "yellow", "music", "window", "paper", "apple", "river",
               "morning", "evening", "light", "sound", "voice", "people", "little", "number", "better", "later",
               "open", "close", "again", "never", "always", "maybe")


def speakers(rng: np.random.Generator, count: int, pool: list[tuple[str, str]]) -> list[dict]:
    """``count`` speakers drawn without replacement from ``pool`` (voice, variant), each with
    its own base pitch (espeak 0-99) and rate (words per minute)."""
    chosen = rng.choice(len(pool), size=count, replace=False)
    return [{"voice": pool[i][0], "variant": pool[i][1], "pitch": int(rng.integers(25, 75)),
             "rate": int(rng.integers(130, 190))} for i in chosen]


def say(word: str, spk: dict, rng: np.random.Generator) -> np.ndarray:
    """The word spoken by ``spk`` (pitch and rate jittered per utterance), float32 at 16 kHz."""
    pitch = int(np.clip(spk["pitch"] + rng.integers(-6, 7), 0, 99))
    rate = int(spk["rate"] * rng.uniform(0.9, 1.1))
    out = subprocess.run(["espeak-ng", "-v", f"{spk['voice']}+{spk['variant']}", "-p", str(pitch), "-s", str(rate),
                          "--stdout", word], capture_output=True, check=True).stdout
    wave, sr = sf.read(io.BytesIO(out), dtype="float32")
    wave = AF.resample(torch.from_numpy(wave), sr, SAMPLE_RATE).numpy()
    nz = np.flatnonzero(np.abs(wave) > 1e-3)  # espeak pads with silence: keep the word itself
    return wave[nz[0]: nz[-1] + 1] if len(nz) else wave


def clip_of(word_wave: np.ndarray, rng: np.random.Generator, seconds: float) -> np.ndarray:
    """The word at a random onset in a ``seconds`` clip, over white or brown noise (SNR 5-30 dB)."""
    n = int(seconds * SAMPLE_RATE)
    word = word_wave[:n]
    out = np.zeros(n, dtype=np.float64)
    start = int(rng.integers(0, n - len(word) + 1))
    out[start: start + len(word)] = word
    noise = rng.standard_normal(n)
    if rng.random() < 0.5:
        noise = np.cumsum(noise)
        noise -= np.convolve(noise, np.ones(801) / 801, mode="same")  # brown noise without the drift
    rms_word = np.sqrt(np.mean(word**2)) + 1e-9
    noise *= rms_word / (np.sqrt(np.mean(noise**2)) + 1e-12) * 10 ** (-rng.uniform(5, 30) / 20)
    out += noise
    return (out * rng.uniform(0.2, 0.9) / (np.abs(out).max() + 1e-12)).astype(np.float32)


def make_spoken_words(out: Path, train_per_word: int = 48, eval_per_word: int = 20, train_speakers: int = 40,
                      eval_speakers: int = 12, seconds: float = 2.0, seed: int = 0, unlabelled: int = 0) -> dict:
    """Write the dataset to ``out``; returns its manifests and counts."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("spoken_words: the espeak-ng program is not installed (apt-get install espeak-ng)")
    rng = np.random.default_rng(seed)
    pool = [(v, s) for v in VOICES for s in VARIANTS]
    order = rng.permutation(len(pool))
    train_pool = [pool[i] for i in order[: len(pool) // 2]]  # voice pairs never shared between splits
    eval_pool = [pool[i] for i in order[len(pool) // 2:]]
    splits = {"train": (speakers(rng, train_speakers, train_pool), train_per_word),
              "eval": (speakers(rng, eval_speakers, eval_pool), eval_per_word)}
    label_map = LabelMap(tuple(f"/word/{w}" for w in WORDS), tuple(WORDS))
    out.mkdir(parents=True, exist_ok=True)
    label_map.to_csv(out / "class_labels_indices.csv")
    result = {"root": str(out)}
    for split, (spks, per_word) in splits.items():
        folder = out / "audio" / split
        folder.mkdir(parents=True, exist_ok=True)
        clips = []
        for w, word in enumerate(WORDS):
            for k in range(per_word):
                spk = spks[(w + k * len(WORDS)) % len(spks)]
                wave = clip_of(say(word, spk, rng), rng, seconds)
                path = folder / f"{split}_{word}_{k:03d}.wav"
                sf.write(path, wave, SAMPLE_RATE, subtype="PCM_16")
                clips.append(Clip(path.stem, path, (f"/word/{word}",)))
        write_json_manifest(out / f"{split}.json", clips, relative_to=out)
        result[f"{split}_manifest"] = str(out / f"{split}.json")
        result[f"num_{split}"] = len(clips)
    if unlabelled:
        result.update(write_unlabelled(out, splits["train"][0], unlabelled, seconds, seed))
    return result


def write_unlabelled(out: Path, spks: list[dict], count: int, seconds: float, seed: int) -> dict:
    """``count`` clips of :data:`OTHER_WORDS` by the training speakers ``spks``, listed in unlabelled.txt."""
    rng = np.random.default_rng([seed, 1])  # its own stream: the labelled clips do not depend on it
    folder = out / "audio" / "unlabelled"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        word = OTHER_WORDS[int(rng.integers(len(OTHER_WORDS)))]
        path = folder / f"unlabelled_{k:05d}.wav"
        sf.write(path, clip_of(say(word, spks[int(rng.integers(len(spks)))], rng), rng, seconds), SAMPLE_RATE,
                 subtype="PCM_16")
        paths.append(path.relative_to(out).as_posix())
    (out / "unlabelled.txt").write_text("\n".join(paths) + "\n")
    train = sorted(p.relative_to(out).as_posix() for p in (out / "audio" / "train").glob("*.wav"))
    (out / "pretrain.txt").write_text("\n".join(train + paths) + "\n")
    return {"unlabelled_list": str(out / "unlabelled.txt"), "pretrain_list": str(out / "pretrain.txt"),
            "num_unlabelled": count}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train-per-word", type=int, default=48)
    p.add_argument("--eval-per-word", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unlabelled", type=int, default=0, help="also N clips of other words, for pretraining")
    a = p.parse_args(argv)
    info = make_spoken_words(a.out, a.train_per_word, a.eval_per_word, seed=a.seed, unlabelled=a.unlabelled)
    extra = f" and {info['num_unlabelled']} unlabelled" if a.unlabelled else ""
    print(f"wrote {info['num_train']} train / {info['num_eval']} eval clips{extra} to {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
