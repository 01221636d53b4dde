"""How a teacher's logits are stored: dense fp16, or top-k (fp16 values + bit-packed class indices).

A storage turns float logits of shape (n, V, C) into the arrays the file holds
(:meth:`encode`) and back (:meth:`decode`). The datasets it names live in the teacher's
group; FORMAT.md specifies them. Everything here is pure numpy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

_FP16_MAX = float(np.finfo(np.float16).max)


def index_bits(num_classes: int) -> int:
    """Bits per packed class index: enough for ``num_classes - 1`` (10 for AudioSet's 527)."""
    return max(1, math.ceil(math.log2(num_classes))) if num_classes > 1 else 1


def pack_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    """(..., k) non-negative ints < 2**bits -> (..., ceil(k*bits/8)) uint8, big-endian bit order."""
    idx = np.asarray(indices, dtype=np.uint32)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    bitplanes = ((idx[..., None] >> shifts) & 1).astype(np.uint8)  # (..., k, bits)
    return np.packbits(bitplanes.reshape(*idx.shape[:-1], idx.shape[-1] * bits), axis=-1)  # explicit: (0, k) works too


def unpack_indices(packed: np.ndarray, k: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_indices`: (..., bytes) uint8 -> (..., k) int64."""
    flat = np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=-1, count=k * bits)
    planes = flat.reshape(*packed.shape[:-1], k, bits).astype(np.int64)
    weights = (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))
    return planes @ weights


def _to_fp16(arr: np.ndarray, what: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        half = arr.astype(np.float16)
    if not np.isfinite(half).all():
        raise ValueError(f"{what} exceed the float16 range (|x| > {_FP16_MAX:g}): max |x| = {float(np.abs(arr).max()):g}")
    return half


@dataclass(frozen=True)
class DenseStorage:
    """Every logit, fp16: ``logits`` (N, V, C)."""

    kind = "dense"

    def describe(self) -> dict:
        return {"kind": "dense"}

    def datasets(self, num_classes: int) -> dict[str, tuple[tuple[int, ...], np.dtype, object]]:
        """name -> (per-view shape, dtype, fill value)."""
        return {"logits": ((num_classes,), np.dtype(np.float16), np.float16(np.nan))}

    def bytes_per_view(self, num_classes: int) -> int:
        return 2 * num_classes

    def encode(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        return {"logits": _to_fp16(logits, "logits")}

    def decode(self, arrays: dict[str, np.ndarray], num_classes: int) -> np.ndarray:
        return arrays["logits"].astype(np.float32)


@dataclass(frozen=True)
class TopKStorage:
    """The k largest logits per view (fp16 values, class indices bit-packed) plus one fp16 value for the rest.

    The rest rule: every class outside the top k gets the same logit
    ``r = logsumexp(rest) - log(C - k)``, so the softmax normaliser over all C classes (and
    hence every top-k class's softmax probability at temperature 1) is what the dense
    logits give; the rest share the remaining mass equally.
    """

    k: int
    kind = "topk"

    def describe(self) -> dict:
        return {"kind": "topk", "k": self.k}

    def _check(self, num_classes: int) -> None:
        if not 1 <= self.k < num_classes:
            raise ValueError(f"top-k storage needs 1 <= k < number of classes ({num_classes}); got k={self.k}")

    def datasets(self, num_classes: int) -> dict[str, tuple[tuple[int, ...], np.dtype, object]]:
        self._check(num_classes)
        nbytes = math.ceil(self.k * index_bits(num_classes) / 8)
        return {
            "topk_values": ((self.k,), np.dtype(np.float16), np.float16(np.nan)),
            "topk_indices": ((nbytes,), np.dtype(np.uint8), np.uint8(0)),
            "topk_rest": ((), np.dtype(np.float16), np.float16(np.nan)),
        }

    def bytes_per_view(self, num_classes: int) -> int:
        return 2 * self.k + math.ceil(self.k * index_bits(num_classes) / 8) + 2

    def encode(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        x = np.asarray(logits)
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float64)  # float64 input stays float64: values round to fp16 once, like dense storage
        c = x.shape[-1]
        self._check(c)
        top = self._top(x)
        values = np.take_along_axis(x, top, axis=-1)
        return {
            "topk_values": _to_fp16(values, "logits"),
            "topk_indices": pack_indices(top, index_bits(c)),
            "topk_rest": _to_fp16(rest_logit(x, top), "logits"),
        }

    def _top(self, x: np.ndarray) -> np.ndarray:
        """Indices of the k largest, largest first, ties broken by the smaller class index
        (the order of a stable sort of -x)."""
        c = x.shape[-1]
        if x.dtype != np.float32 or c > 2**16:
            return np.argsort(-x, axis=-1, kind="stable")[..., : self.k]
        # One unique int64 key per entry (descending value, then ascending index) lets a
        # partial partition pick the same k a full stable sort would, several times faster.
        bits = (x + np.float32(0.0)).view(np.int32).astype(np.int64)  # + 0.0: -0.0 and 0.0 tie
        monotone = np.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # float order as integer order
        key = -monotone * c + np.arange(c, dtype=np.int64)
        top = np.argpartition(key, self.k - 1, axis=-1)[..., : self.k]
        return np.take_along_axis(top, np.argsort(np.take_along_axis(key, top, axis=-1), axis=-1), axis=-1)

    def decode(self, arrays: dict[str, np.ndarray], num_classes: int) -> np.ndarray:
        values = arrays["topk_values"].astype(np.float32)
        idx = unpack_indices(arrays["topk_indices"], self.k, index_bits(num_classes))
        out = np.repeat(arrays["topk_rest"].astype(np.float32)[..., None], num_classes, axis=-1)
        np.put_along_axis(out, idx, values, axis=-1)
        return out


def rest_logit(logits: np.ndarray, top: np.ndarray) -> np.ndarray:
    """The rest rule in float64: logsumexp of the logits outside ``top`` minus log(their count)."""
    rest = np.asarray(logits, dtype=np.float64).copy()
    np.put_along_axis(rest, top, -np.inf, axis=-1)
    m = rest.max(axis=-1, keepdims=True)
    lse = (m + np.log(np.exp(rest - m).sum(axis=-1, keepdims=True)))[..., 0]
    return lse - math.log(rest.shape[-1] - top.shape[-1])


Storage = DenseStorage | TopKStorage


def storage_from_spec(spec: str | int | None) -> Storage:
    """``"dense"`` / None -> dense; ``"topk:20"``, ``"top20"`` or an int k -> top-k."""
    if spec is None or spec == "dense":
        return DenseStorage()
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        return TopKStorage(int(spec))
    text = str(spec).strip().lower()
    for prefix in ("topk:", "topk=", "top-k:", "top"):
        if text.startswith(prefix) and text[len(prefix):].isdigit():
            return TopKStorage(int(text[len(prefix):]))
    raise ValueError(f"unknown storage {spec!r}; use 'dense' or 'topk:K' (e.g. topk:20)")


def storage_from_attr(text: str) -> Storage:
    """The storage a teacher group's ``storage`` attribute (JSON) describes."""
    d = json.loads(text)
    if d.get("kind") == "dense":
        return DenseStorage()
    if d.get("kind") == "topk" and isinstance(d.get("k"), int):
        return TopKStorage(d["k"])
    raise ValueError(f"unknown storage {text}")
