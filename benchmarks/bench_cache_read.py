"""Random-batch reading of a logit cache against an in-memory numpy gather, in one run.

    python benchmarks/bench_cache_read.py                      # 200k clips x 527, batch 4096
    python benchmarks/bench_cache_read.py --clips 20000 --batches 5

Writes caches with ``LogitCacheWriter`` (one view per clip): dense fp16 with the
writer's default chunking and LZF compression, with uncompressed chunks, and in the
contiguous layout; then top-k (``--k``, default 20) storage in the contiguous layout.
It times ``LogitCacheReader.get`` on random batches of clip ids (uniform without
replacement, as a shuffled epoch draws them): the median of ``--repeats`` passes over
the batches, each pass with a fresh reader so nothing starts cached. The references
are numpy gathers from the same data held in memory: the fp16 logits (fp16 -> fp32, as
``get`` returns), and the encoded top-k arrays gathered and decoded with the same rest
rule. Every row shows its bytes per view: what the format stores per view, and what the
teacher's datasets take on disk per view. The file is read warm (in the OS page cache),
the case of a training node that has read the cache once; a cold read is disk-bound.

"At least 20x a GPU step" needs the consumption rate of a GPU training step, which no
GPU here could measure: ``--gpu-clips-per-second`` (default 2000, an assumed upper
bound for DASS-small bf16 at 10 s on one H100-class GPU) sets it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

#: Rows per write call (and per encode call of the in-memory top-k reference).
STEP = 50_000


def _time_batches(make_fn, batches: list, repeats: int) -> float:
    """Seconds per batch: the median over ``repeats`` passes of the mean over ``batches``.

    ``make_fn()`` is called (untimed) before every pass, so each pass can start fresh.
    """
    passes = []
    for _ in range(repeats):
        fn = make_fn()
        t = time.perf_counter()
        for b in batches:
            fn(b)
        passes.append((time.perf_counter() - t) / len(batches))
    return float(np.median(passes))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=200_000)
    ap.add_argument("--classes", type=int, default=527)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5, help="timed passes over the batches; the median is shown")
    ap.add_argument("--k", type=int, default=20, help="k of the top-k rows")
    ap.add_argument("--gpu-clips-per-second", type=float, default=2000.0)
    args = ap.parse_args()

    from dass_distill.logit_cache import LogitCacheReader, LogitCacheWriter
    from dass_distill.logit_cache.storage import DenseStorage, TopKStorage

    rng = np.random.default_rng(0)
    ids = [f"clip{i:07d}" for i in range(args.clips)]
    logits = rng.standard_normal((args.clips, args.classes), dtype=np.float32).astype(np.float16)
    labels = [f"/m/{i}" for i in range(args.classes)]
    batches = [rng.choice(args.clips, args.batch, replace=False) for _ in range(args.batches)]
    id_batches = [[ids[i] for i in b] for b in batches]
    dense, topk = DenseStorage(), TopKStorage(args.k)
    # rows: (name, bytes per view of the format, bytes per view on disk or in memory, s / batch, reference s / batch)
    rows: list[tuple[str, int, float, float, float]] = []

    def numpy_dense():
        return lambda b: logits[b].astype(np.float32)

    numpy_s = _time_batches(numpy_dense, batches, args.repeats)
    dense_bpv = dense.bytes_per_view(args.classes)
    rows.append(("numpy gather, dense fp16 in memory (reference)", dense_bpv, logits.nbytes / args.clips,
                 numpy_s, numpy_s))
    parts = [topk.encode(logits[s:s + STEP, None].astype(np.float32)) for s in range(0, args.clips, STEP)]
    encoded = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    del parts
    topk_bpv = topk.bytes_per_view(args.classes)

    def numpy_topk():
        return lambda b: topk.decode({k: v[b] for k, v in encoded.items()}, args.classes)

    topk_numpy_s = _time_batches(numpy_topk, batches, args.repeats)
    rows.append((f"numpy gather + decode, top-k {args.k} in memory (reference)", topk_bpv,
                 sum(a.nbytes for a in encoded.values()) / args.clips, topk_numpy_s, topk_numpy_s))

    configs = [("dense", "lzf", "chunked", numpy_s), ("dense", "none", "chunked", numpy_s),
               ("dense", "none", "contiguous", numpy_s), (f"topk:{args.k}", "none", "contiguous", topk_numpy_s)]
    with tempfile.TemporaryDirectory() as tmp:
        for storage, compression, layout, ref_s in configs:
            path = Path(tmp) / f"{storage.replace(':', '')}_{compression}_{layout}.h5"
            t = time.perf_counter()
            with LogitCacheWriter(path, ids, labels, labels, {"t": {"kind": "bench"}}, compression=compression,
                                  layout=layout, storage=storage) as w:
                for s in range(0, args.clips, STEP):
                    w.write("t", ids[s:s + STEP], logits[s:s + STEP])
            write_s = time.perf_counter() - t
            reader = LogitCacheReader(path)
            info = reader.storage_info("t")
            chunk_rows = reader.chunk_rows("t")
            reader.get(id_batches[0][:1], "t")  # open the handle and warm the page cache of the metadata
            for b in id_batches:  # warm the OS page cache: the warm case is what is measured
                reader.get(b, "t")

            def fresh_get(path=path):  # every pass with a fresh reader: an empty chunk LRU
                return partial(LogitCacheReader(path).get, teacher="t")

            s = _time_batches(fresh_get, id_batches, args.repeats)
            mib = path.stat().st_size / 2**20
            kind = "dense" if storage == "dense" else f"top-k {args.k}"
            how = (f"{'LZF' if compression == 'lzf' else 'uncompressed'} chunks of {chunk_rows} rows"
                   if layout == "chunked" else "contiguous, memory-mapped")
            rows.append((f"LogitCacheReader.get, {kind}, {how} ({mib:.0f} MiB, written in {write_s:.1f} s)",
                         info["bytes_per_view"], info["storage_bytes"] / args.clips, s, ref_s))

    table = Table(title=f"random batches of {args.batch} from {args.clips} clips x {args.classes} classes, "
                        f"1 view per clip (median of {args.repeats} passes, each the mean of {args.batches})")
    for col in ("reader", "B / view (format)", "B / view (disk)", "ms / batch", "views / s", "vs numpy dense",
                "vs numpy same storage", f"vs GPU step ({args.gpu_clips_per_second:g}/s)"):
        table.add_column(col, justify="left" if col == "reader" else "right")
    for name, bpv, measured, s, ref_s in rows:
        rate = args.batch / s
        table.add_row(name, str(bpv), f"{measured:.1f}", f"{s * 1e3:.1f}", f"{rate:,.0f}", f"{numpy_s / s:.1%}",
                      f"{ref_s / s:.1%}", f"{rate / args.gpu_clips_per_second:.1f}x")
    Console(width=220).print(table)


if __name__ == "__main__":
    main()
