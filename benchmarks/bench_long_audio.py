"""Long-recording tagging on CPU: time and peak memory of window-by-window streaming
(``tag_timeline``) against recording length, and of one full pass for contrast.

    python benchmarks/bench_long_audio.py                  # 10 and 60 min, batch 1 and 8, 2 threads
    python benchmarks/bench_long_audio.py --minutes 10 60 --threads 2 --hop 5 --batch-size 8

Writes synthetic 16 kHz int16 WAV files (white noise plus a few recurring tones) into a
temporary folder. Each measurement runs in a fresh subprocess with a random-weight
``dass_small`` (527 classes), so its peak resident memory (ru_maxrss) is its own;
"peak extra memory" is that peak minus the same process's peak just before the tagging
call (model built, file not yet opened), i.e. what tagging the file itself needs.
Streaming should need about the same at 60 min as at 10 min (one batch of windows plus
the (windows x 527) scores); the full pass reads the whole file and runs the model on
every frame at once, so its memory grows with duration (measured at 10 s and 60 s).
Real-time factor = wall time / audio duration (lower is faster).

The benchmark's default hop is 10 s (windows side by side), not tag_timeline's 5 s: a
window costs the same whatever the hop and memory does not depend on it, but at hop 5
every second is tagged twice and the 60-min run takes about 9 minutes per batch size on
2 cores. At hop 5, expect twice the wall time and real-time factor, the same windows/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SR = 16000

WORKER = r"""
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
mode, path, window, hop, batch = sys.argv[1], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
from dass_distill.data.audio import read_audio
from dass_distill.inference import Tagger
from dass_distill.frontend import KaldiFbank
from dass_distill.students import create_model
from dass_distill.timeline import tag_timeline
torch.manual_seed(0)
names = [f"class_{i}" for i in range(527)]
tagger = Tagger.from_module(create_model("dass_small", num_classes=527), KaldiFbank(), names, names)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if mode == "stream":
    windows = len(tag_timeline(tagger, path, window, hop, batch_size=batch, progress=False))
else:
    tagger.scores(read_audio(path, tagger.sample_rate))
    windows = 1
elapsed = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"time_s": elapsed, "windows": windows, "peak_mib": (peak - base) / 1024, "base_mib": base / 1024}))
"""


def write_recording(path: Path, seconds: float, seed: int = 0) -> Path:
    """Noise plus 3 s tones at a few pitches every 20 s, written a minute at a time (int16 PCM)."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    block = 60 * SR
    with sf.SoundFile(str(path), "w", SR, 1, subtype="PCM_16") as f:
        for first in range(0, int(seconds * SR), block):
            t = (first + np.arange(min(block, int(seconds * SR) - first))) / SR
            pitch = np.array([440.0, 880.0, 1320.0, 2000.0])[(t // 20).astype(int) % 4]
            tone = 0.3 * np.sin(2 * np.pi * pitch * t) * ((t % 20) < 3)
            f.write((tone + 0.05 * rng.standard_normal(len(t))).astype(np.float32))
    return path


def measure(mode: str, path: Path, args: argparse.Namespace, batch_size: int = 1) -> dict:
    cmd = [sys.executable, "-c", WORKER, mode, str(args.threads), str(path), str(args.window), str(args.hop),
           str(batch_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    if proc.returncode != 0:
        raise SystemExit(f"{mode} on {path.name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[10, 60], help="recording lengths to stream")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--window", type=float, default=10.0, help="window length (s)")
    ap.add_argument("--hop", type=float, default=10.0, help="window hop (s); tag_timeline's default is 5")
    ap.add_argument("--batch-size", type=int, nargs="+", default=[1, 8],
                    help="windows per forward pass (tag_timeline's default is 8)")
    ap.add_argument("--full-seconds", type=float, nargs="+", default=[10, 60],
                    help="lengths of the full-pass contrast")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 110))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            path = write_recording(Path(tmp, f"{minutes:g}min.wav"), minutes * 60)
            for batch in args.batch_size:
                console.print(f"streaming {minutes:g} min, batch {batch} ...")
                rows.append((f"stream, batch {batch}", minutes * 60, measure("stream", path, args, batch)))
            path.unlink()
        for seconds in args.full_seconds:
            path = write_recording(Path(tmp, f"{seconds:g}s.wav"), seconds)
            rows.append(("full pass", seconds, measure("full", path, args)))

    table = Table(title=f"dass_small (random weights, 527 classes) on CPU, {args.threads} threads; "
                        f"stream = tag_timeline, {args.window:g} s windows, hop {args.hop:g} s; "
                        "full pass = read_audio + Tagger.scores on the whole file")
    for col in ("mode", "audio", "windows", "wall (s)", "windows/s", "real-time factor", "peak extra memory (MiB)"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for mode, seconds, r in rows:
        stream = mode.startswith("stream")
        table.add_row(mode, f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s",
                      str(r["windows"]) if stream else "-", f"{r['time_s']:.1f}",
                      f"{r['windows'] / r['time_s']:.2f}" if stream else "-", f"{r['time_s'] / seconds:.4f}",
                      f"{r['peak_mib']:.0f}")
    console.print(table)
    for batch in args.batch_size:
        streams = [(s, r) for m, s, r in rows if m == f"stream, batch {batch}"]
        if len(streams) > 1:
            (s0, r0), (s1, r1) = streams[0], streams[-1]
            console.print(f"batch {batch}: streaming {s1 / 60:g} min vs {s0 / 60:g} min: memory "
                          f"x{r1['peak_mib'] / max(r0['peak_mib'], 1):.2f}, time x{r1['time_s'] / r0['time_s']:.1f} "
                          f"for x{s1 / s0:g} the audio")
    fulls = [(s, r) for m, s, r in rows if m == "full pass"]
    if len(fulls) > 1:
        (s0, r0), (s1, r1) = fulls[0], fulls[-1]
        console.print(f"full pass {s1:g} s vs {s0:g} s: memory x{r1['peak_mib'] / max(r0['peak_mib'], 1):.1f} "
                      f"for x{s1 / s0:g} the audio")


if __name__ == "__main__":
    main()
