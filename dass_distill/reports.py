"""What the commands print: rich tables and lines built from their results.

Everything that comes from the user or their files (paths, clip ids, label names, error
reasons) is put in as plain ``Text``, never as markup: a path or clip id with brackets,
or a pip extra like ``dass-distill[onnx]``, prints as it is.
"""

from __future__ import annotations

import json
import math
from typing import Iterable, Sequence

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text


def plain(value: object, style: str = "") -> Text:
    """``value`` as literal text (no markup), optionally styled."""
    return Text(str(value), style=style)


def line(*parts: object | tuple[object, str]) -> Text:
    """A line of literal parts; ``(value, style)`` pairs are styled."""
    out = Text()
    for p in parts:
        value, style = p if isinstance(p, tuple) else (p, "")
        out.append(str(value), style=style)
    return out


def table(title: object | None = None, columns: Sequence[str | tuple[str, str]] = (), caption: object | None = None,
          show_header: bool = True) -> Table:
    """A table with literal title/caption; columns are names or (name, justify)."""
    t = Table(title=plain(title) if title is not None else None, caption=plain(caption) if caption else None,
              show_header=show_header)
    for col in columns:
        name, justify = col if isinstance(col, tuple) else (col, "left")
        t.add_column(name, justify=justify)
    return t


def add_row(t: Table, *cells: object) -> None:
    t.add_row(*(c if isinstance(c, Text) else plain(c) for c in cells))


def key_value_table(title: object, items: Iterable[tuple[object, object]]) -> Table:
    t = Table(title=plain(title), show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    for key, value in items:
        add_row(t, key, value)
    return t


# --------------------------------------------------------------------------- models
def models_table(rows: Iterable[tuple[str, str, int]]) -> Table:
    """``models``: (name, role, parameters) rows."""
    t = table("models", ["name", "role", ("parameters", "right")])
    for name, role, params in rows:
        add_row(t, name, role, f"{params / 1e6:.2f} M")
    return t


# --------------------------------------------------------------------------- cache
def cache_written_line(out, report) -> Text:
    written = ", ".join(f"{k}: {v}" for k, v in report.written.items())
    resumed = f"; {report.resumed_blocks} blocks reused from an interrupted run" if report.resumed_blocks else ""
    return line(f"wrote {out}: {report.clips} clips in manifest; logits written ({written}); "
                f"{len(report.failed)} failed{resumed}")


def views_text(views: dict) -> str:
    """``cache-info``: the views line, e.g. ``10 per clip, augmented (replay 16 B per view, 1.5 MiB on disk)``."""
    count = views.get("count", 1)
    if not views.get("augmented"):
        return f"{count} per clip, the clip itself (not augmented)"
    on_disk = views.get("params_bytes_on_disk")
    disk = ""
    if on_disk is not None:
        size = next((f"{on_disk / 2**p:.1f} {u}" for p, u in ((30, "GiB"), (20, "MiB"), (10, "KiB")) if on_disk >= 2**p),
                    f"{on_disk} B")
        disk = f", {size} on disk"
    return f"{count} per clip, augmented (replay {views.get('replay_bytes_per_view', 0)} B per view{disk})"


def storage_text(teacher: dict) -> str:
    """``cache-info``: a teacher's storage cell, e.g. ``top-k 20, 67 B/view + 16 B replay``."""
    storage = teacher.get("storage") or {}
    kind = f"top-k {storage.get('k')}" if storage.get("kind") == "topk" else str(storage.get("kind", "?"))
    text = f"{kind}, {teacher.get('bytes_per_view')} B/view"
    replay = teacher.get("replay_bytes_per_view") or 0
    return text + (f" + {replay} B replay" if replay else "")


def cache_info_tables(path, summary: dict) -> list[Table]:
    """``cache-info``: the file's summary, a teacher overview and each teacher's provenance."""
    items = []
    for key, value in summary.items():
        if key == "teachers":
            continue
        if key == "views":
            items.append(("views", views_text(value)))
            if value.get("augment") is not None:
                items.append(("augment", json.dumps(value["augment"])))
            continue
        items.append((key, json.dumps(value) if isinstance(value, (dict, list)) else value))
    out = [key_value_table(path, items)]
    overview = table("teachers", ["name", "kind", "ensemble", "written", "missing", "failed", "views", "storage",
                                  "long clips", "checkpoint sha256"])
    views = summary.get("views") or {}
    for name, te in summary.get("teachers", {}).items():
        prov = te.get("provenance") or {}
        clips = prov.get("clips") or {}
        long = clips.get("long")
        if views.get("augmented"):
            long = "- (views cut to the window)"
        elif long == "windows":
            long = (f"{clips.get('window_seconds', 0):.2f} s windows, hop {clips.get('hop_seconds')} s, "
                    f"{clips.get('aggregate')}")
        add_row(overview, name, prov.get("kind", "?"), (prov.get("ensemble") or {}).get("name", ""), te["written"],
                te["missing"], te["failed"], f"{views.get('count', 1)}{' augmented' if views.get('augmented') else ''}",
                storage_text(te), long or "?", str(prov.get("checkpoint_sha256") or "")[:12])
    out.append(overview)
    for name, te in summary.get("teachers", {}).items():
        out.append(key_value_table(f"teacher {name}", [
            (key, json.dumps(value, indent=1) if isinstance(value, dict) else json.dumps(value)
             if isinstance(value, list) else value) for key, value in te.items()]))
    return out


def cache_check_report(cache, data, report, show: int) -> list[RenderableType]:
    """``cache-check``: coverage per teacher, the gaps, the verification and the verdict."""
    out: list[RenderableType] = []
    t = table(f"{cache} vs {data} ({report.manifest_clips} clips)",
              ["teacher", ("cached", "right"), ("in manifest, no logits", "right"),
               ("cached, not in manifest", "right")])
    for c in report.coverage:
        add_row(t, c.teacher, c.cached, len(c.missing), len(c.extra))
    out.append(t)
    if not report.labels_match:
        out.append(line((f"label map differs: {report.label_problem}; re-create the cache with this label map", "red")))
    for c in report.coverage:
        for what, ids in (("in the manifest but without logits", c.missing), ("cached but not in the manifest", c.extra)):
            if ids:
                reasons = [f"{i} ({report.failed[i]})" if i in report.failed else i for i in ids[:show]]
                out.append(line((f"{c.teacher}: {len(ids)} clip(s) {what}:", "yellow"),
                                " " + ", ".join(reasons) + (" ..." if len(ids) > show else "")))
    if report.verifications:
        vt = table("verification against the live teacher",
                   ["teacher", ("clips", "right"), ("max |diff|", "right"), ("beyond fp16 rounding", "right"),
                    ("tolerance", "right"), ("ok", "right")])
        for v in report.verifications:
            add_row(vt, v.teacher, len(v.clips), f"{v.max_abs_diff:.2e}", f"{v.max_excess:.2e}", f"{v.atol:g}",
                    plain("yes", "green") if v.ok else plain("NO", "red"))
        out.append(vt)
    out.append(plain("cache matches the manifest", "green") if report.ok
               else plain("cache does not match (see above)", "red"))
    return out


# --------------------------------------------------------------------------- train / export / predict
def training_done_line(summary: dict) -> Text:
    if summary.get("best_mAP") is not None:
        return line(f"done: {summary['steps']} steps, best eval mAP {summary['best_mAP']:.4f} "
                    f"(step {summary['best_step']}); run folder {summary['output_dir']}")
    return line(f"done: {summary['steps']} steps; run folder {summary['output_dir']}")


def pretraining_done_line(summary: dict) -> Text:
    ev = (summary["health"] or {}).get("final_eval") or {}
    shown = ", ".join(f"{k} {ev[k]:.4f}" for k in ("nce", "acc", "mse") if k in ev)
    return line(f"done: {summary['steps']} pretraining steps" + (f", eval {shown}" if shown else "")
                + f"; run folder {summary['output_dir']}")


def export_table(report) -> Table:
    """``export``: each artefact's check."""
    t = table(f"exported {report.family} model (checkpoint '{report.tag}') to {report.folder}",
              ["format", "file", "input", ("frames", "right"), ("max |logit diff|", "right"), ("tolerance", "right")])
    for c in report.checks:
        path = report.files.get(c.format)
        add_row(t, c.format, path.name if path and path.is_file() else (path or ""), c.input, c.frames,
                f"{c.max_abs_diff:.2e}", f"{c.atol:g}")
    return t


def tags_table(path, tags: Sequence[tuple[str, float]]) -> Table:
    """``predict``: one file's top tags."""
    t = table(path, ["tag", ("score", "right")])
    for name, score in tags:
        add_row(t, name, f"{score:.3f}")
    return t


def clock(seconds: float) -> str:
    """``M:SS.s``, or ``H:MM:SS.s`` from an hour on."""
    minutes, secs = divmod(round(float(seconds), 1), 60)  # round first: 59.96 s is 1:00.0, not 0:60.0
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{secs:04.1f}" if hours else f"{minutes}:{secs:04.1f}"


def timeline_table(tl, top_k: int = 5) -> Table:
    """``predict`` on a long recording: one row per window, its extent and top tags."""
    t = table(f"{tl.path} ({clock(tl.duration_s)}, {len(tl)} windows of {tl.window_s:g} s, hop {tl.hop_s:g} s)",
              [("start", "right"), ("end", "right"), "top tags"],
              caption="whole recording (max over windows): " + ", ".join(f"{n} {s:.3f}" for n, s in tl.clip_top(top_k)))
    for start, end, tags in zip(tl.starts, tl.ends, tl.top(top_k)):
        add_row(t, clock(start), clock(end), ", ".join(f"{n} {s:.3f}" for n, s in tags))
    return t


# --------------------------------------------------------------------------- evaluate
def evaluation_overview(result: dict, title: str) -> Table:
    """``evaluate``: the overall metrics as a two-column table."""
    fmt = lambda v, digits: "n/a" if not math.isfinite(v) else f"{v:.{digits}f}"
    records = result["per_class"]
    with_ap = sum(math.isfinite(r["ap"]) for r in records)
    with_auc = sum(math.isfinite(r["auc"]) for r in records)
    t = table(title, ["metric", ("value", "right")], show_header=False)
    add_row(t, "mAP", fmt(result["mAP"], 4))
    add_row(t, "mAUC", fmt(result["mAUC"], 4))
    add_row(t, "d-prime", fmt(result["d_prime"], 3))
    add_row(t, "clips", result["clips"])
    add_row(t, "unreadable clips", len(result["errors"]))
    add_row(t, "classes in mAP",
            f"{with_ap} of {len(records)}" + (" (the rest have no positive)" if with_ap < len(records) else ""))
    if with_auc != with_ap:
        add_row(t, "classes in mAUC", f"{with_auc} of {len(records)} (AUC needs positives and negatives)")
    return t


def evaluation_class_tables(records: list[dict], top: int) -> list[Table]:
    """``evaluate``: the ``top`` best and worst classes by AP, or all classes ranked when they overlap."""
    from dass_distill.evaluation import best_and_worst

    ranked = sum(math.isfinite(r["ap"]) for r in records)
    if top == 0 or ranked == 0:
        return []
    if 2 * top >= ranked:
        return [class_table(best_and_worst(records, ranked)[0], f"all {ranked} classes by AP")]
    best, worst = best_and_worst(records, top)
    return [class_table(best, f"best {top} classes by AP"), class_table(worst, f"worst {top} classes by AP")]


def class_table(rows: list[dict], title: str) -> Table:
    t = table(title, [("index", "right"), "class", "label id", ("positives", "right"), ("AP", "right"),
                      ("AUC", "right")])
    for r in rows:
        add_row(t, r["index"], r["label"], r["label_id"], r["positives"], f"{r['ap']:.4f}",
                "n/a" if not math.isfinite(r["auc"]) else f"{r['auc']:.4f}")
    return t
