"""Random-batch reading of a logit cache against an in-memory numpy gather, in one run.

    python benchmarks/bench_cache_read.py                      # 200k clips x 527, batch 4096
    python benchmarks/bench_cache_read.py --clips 20000 --batches 5

Writes a cache with ``LogitCacheWriter`` (fp16: the writer's default chunking with LZF
compression, uncompressed chunks, and the contiguous layout), then times ``LogitCacheReader.get`` on
random batches of clip ids (uniform without replacement, as a shuffled epoch draws
them), each reader fresh so nothing starts cached. The reference is a numpy fancy-index
gather from the same logits held in memory (fp16 -> fp32, as ``get`` returns). The
file is read warm (in the OS page cache), the case of a training node that has read
the cache once; a cold read is disk-bound.

"At least 20x a GPU step" needs the consumption rate of a GPU training step, which no
GPU here could measure: ``--gpu-clips-per-second`` (default 2000, an assumed upper
bound for DASS-small bf16 at 10 s on one H100-class GPU) sets it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table


def _time_batches(fn, batches: list[np.ndarray]) -> float:
    t = time.perf_counter()
    for b in batches:
        fn(b)
    return (time.perf_counter() - t) / len(batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=200_000)
    ap.add_argument("--classes", type=int, default=527)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--gpu-clips-per-second", type=float, default=2000.0)
    args = ap.parse_args()

    from dass_distill.logit_cache import LogitCacheReader, LogitCacheWriter

    rng = np.random.default_rng(0)
    ids = [f"clip{i:07d}" for i in range(args.clips)]
    logits = rng.standard_normal((args.clips, args.classes), dtype=np.float32).astype(np.float16)
    labels = [f"/m/{i}" for i in range(args.classes)]
    batches = [rng.choice(args.clips, args.batch, replace=False) for _ in range(args.batches)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        numpy_s = _time_batches(lambda b: logits[b].astype(np.float32), batches)
        rows.append(("numpy gather, in memory (reference)", numpy_s, None))
        for compression, layout in (("lzf", "chunked"), ("none", "chunked"), ("none", "contiguous")):
            path = Path(tmp) / f"{compression}_{layout}.h5"
            t = time.perf_counter()
            with LogitCacheWriter(path, ids, labels, labels, {"t": {"kind": "bench"}}, compression=compression,
                                  layout=layout) as w:
                step = 50_000
                for s in range(0, args.clips, step):
                    w.write("t", ids[s:s + step], logits[s:s + step])
            write_s = time.perf_counter() - t
            reader = LogitCacheReader(path)
            chunk_rows = reader.chunk_rows("t")
            id_batches = [[ids[i] for i in b] for b in batches]
            reader.get(id_batches[0][:1], "t")  # open the handle and warm the page cache of the metadata
            for b in id_batches:  # warm the OS page cache: the warm case is what is measured
                reader.get(b, "t")
            reader = LogitCacheReader(path)  # fresh: empty chunk LRU
            s = _time_batches(lambda b: reader.get(b, "t"), id_batches)
            mib = path.stat().st_size / 2**20
            how = f"chunks of {chunk_rows} rows" if layout == "chunked" else "contiguous, memory-mapped"
            rows.append((f"LogitCacheReader.get, {compression}, {how} ({mib:.0f} MiB, written in {write_s:.1f} s)",
                         s, None))

    table = Table(title=f"random batches of {args.batch} from {args.clips} clips x {args.classes} classes "
                        f"(mean of {args.batches})")
    for col in ("reader", "ms / batch", "views / s", "vs numpy", f"vs GPU step ({args.gpu_clips_per_second:g}/s)"):
        table.add_column(col, justify="left" if col == "reader" else "right")
    for name, s, _ in rows:
        rate = args.batch / s
        table.add_row(name, f"{s * 1e3:.1f}", f"{rate:,.0f}", f"{numpy_s / s:.1%}",
                      f"{rate / args.gpu_clips_per_second:.1f}x")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
