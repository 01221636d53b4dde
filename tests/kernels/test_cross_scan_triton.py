"""Triton cross-scan / cross-merge against the float64 torch reference.

Without a GPU the kernels run on CPU tensors under the Triton interpreter, which is only
switched on if ``TRITON_INTERPRET=1`` is set before ``triton`` is imported; this pytest
process may have imported it already (torch does, lazily). So every interpreter check
runs in one subprocess: this file run as a script computes all of them and prints a JSON
line, and the tests below assert on it, one result each (the subprocess output is shown
when it fails). The routing of ``cross_scan`` / ``cross_merge`` is tested in-process with a
stub; the CUDA tests run wherever a GPU is present.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dass_distill.kernels import cross_merge, cross_merge_ref, cross_scan, cross_scan_ref

# By import path: the package attribute `cross_scan` is the function, not the module.
cross_scan_module = importlib.import_module("dass_distill.kernels.cross_scan")

# (B, C, H, W): odd sizes and the H = 1 / W = 1 edges (one tile along most axes), plus per
# layout a map spanning two tiles along every axis with the real block sizes (channel-
# first tiles are 4x32x32, channel-last 16x16x16). The interpreter costs ~20 ms per
# program, hence the few programs.
SMALL_SHAPES = [(2, 5, 7, 13), (2, 5, 1, 13), (2, 5, 7, 1), (1, 3, 1, 1)]
MULTI_TILE_SHAPES = {"cf": (1, 5, 33, 33), "cl": (1, 17, 17, 17)}
LAYOUTS = {"cf": False, "cl": True}
CASES = [(layout, shape) for layout in LAYOUTS for shape in [*SMALL_SHAPES, MULTI_TILE_SHAPES[layout]]]
DTYPES = {"float32": (torch.float32, 1e-6), "bfloat16": (torch.bfloat16, 1e-2), "float16": (torch.float16, 1e-2)}
OPS = ("scan_fwd", "merge_fwd", "scan_bwd", "merge_bwd")
# Different (H, W) in one block bucket and one specialisation class (not 1, not % 16).
SAME_KERNEL_SIZES = [(7, 13), (6, 11)], [(33, 250), (40, 1001)], [(1, 1100), (1, 4999)]
KERNEL_SIZE_ARGS = {"C", "H", "W"}
KERNEL_CONSTEXPRS = {"CHANNELS_LAST", "BLOCK_C", "BLOCK_H", "BLOCK_W"}
_MARKER = "CROSS_SCAN_TRITON_CHECKS "


def _case_key(layout: str, dtype: str, shape: tuple[int, ...]) -> str:
    return f"{layout}-{dtype}-{'x'.join(map(str, shape))}"


# ---------------------------------------------------------------------------------------
# Subprocess side: runs under TRITON_INTERPRET=1 on CPU tensors.
# ---------------------------------------------------------------------------------------


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def _ref_map(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The map as the reference takes it, (B, C, H, W) float64."""
    x = x.detach().double()
    return x.permute(0, 3, 1, 2) if channels_last else x


def _ref_merge(y: torch.Tensor, H: int, W: int, channels_last: bool) -> torch.Tensor:
    out = cross_merge_ref(y, H, W)
    return out.transpose(1, 2) if channels_last else out


def _check_layout(m, shape: tuple[int, ...], dtype: torch.dtype, channels_last: bool, seed: int) -> dict[str, float]:
    """Relative errors of the four ops for one shape/dtype/layout (outputs poisoned with NaN)."""
    B, C, H, W = shape
    L = H * W
    g = torch.Generator().manual_seed(seed)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=g, dtype=torch.float64).to(dtype)

    x = randn(B, H, W, C) if channels_last else randn(B, C, H, W)
    y = randn(B, 4, C, L)
    errs = {}

    out = torch.full((B, 4, C, L), float("nan"), dtype=dtype)
    m.launch_cross_scan(x, out, channels_last)
    errs["scan_fwd"] = _rel_err(out, cross_scan_ref(_ref_map(x, channels_last)))

    merged_shape = (B, L, C) if channels_last else (B, C, L)
    out = torch.full(merged_shape, float("nan"), dtype=dtype)
    m.launch_cross_merge(y, out, H, W, channels_last)
    errs["merge_fwd"] = _rel_err(out, _ref_merge(y.double(), H, W, channels_last))

    # Backward through the autograd Functions vs the reference's autograd.
    x_k = x.clone().requires_grad_()
    grad_y = randn(B, 4, C, L)
    m.cross_scan_triton(x_k, channels_last).backward(grad_y)
    x_r = _ref_map(x, channels_last).requires_grad_()
    cross_scan_ref(x_r).backward(grad_y.double())
    errs["scan_bwd"] = _rel_err(_ref_map(x_k.grad, channels_last), x_r.grad)

    y_k = y.clone().requires_grad_()
    grad_out = randn(*merged_shape)
    m.cross_merge_triton(y_k, H, W, channels_last).backward(grad_out)
    y_r = y.double().requires_grad_()
    _ref_merge(y_r, H, W, channels_last).backward(grad_out.double())
    errs["merge_bwd"] = _rel_err(y_k.grad, y_r.grad)
    return errs


def _check_double_backward(m) -> float:
    """The scan's backward is the merge Function, so it differentiates again (into a scan)."""
    B, C, H, W = 2, 3, 5, 6
    x = torch.randn(B, C, H, W, requires_grad=True)
    g = torch.randn(B, 4, C, H * W, requires_grad=True)
    (gx,) = torch.autograd.grad(m.cross_scan_triton(x), x, g, create_graph=True)
    v = torch.randn(B, C, H, W)
    (gx * v).sum().backward()
    return _rel_err(g.grad, cross_scan_ref(v.double()))


def _check_dispatch(m) -> dict[str, float]:
    """cross_scan / cross_merge and an SS2D block taking the Triton path vs the reference."""
    from dass_distill.students.ss2d import SS2D

    def run(fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        reference = cross_scan_module._use_triton
        cross_scan_module._use_triton = lambda t: m  # route CPU tensors to the kernels
        try:
            return fn()
        finally:
            cross_scan_module._use_triton = reference

    errs = {}
    x = torch.randn(2, 6, 5, 9).to(memory_format=torch.channels_last)
    errs["dispatch_channels_last_memory_format"] = _rel_err(run(lambda: cross_scan(x)), cross_scan_ref(x.double()))

    torch.manual_seed(0)
    block = SS2D(d_model=8)
    inp = torch.randn(2, 8, 6, 10)
    grads = {}
    for path, fn in (("triton", run), ("torch", lambda f: f())):
        block.zero_grad()
        x = inp.clone().requires_grad_()
        out = fn(lambda: block(x))
        fn(lambda: out.square().sum().backward())
        grads[path] = [out.detach(), x.grad] + [p.grad for p in block.parameters()]
    errs["dispatch_ss2d"] = max(_rel_err(a, b.double()) for a, b in zip(grads["triton"], grads["torch"], strict=True))
    return errs


def _kernel_args(kernel) -> dict[str, bool]:
    """Parameter name -> is constexpr (works for jitted and interpreted kernels)."""
    import inspect

    import triton.language as tl

    fn = getattr(kernel, "fn", kernel)
    return {
        name: p.annotation is tl.constexpr or "constexpr" in str(p.annotation)
        for name, p in inspect.signature(fn).parameters.items()
    }


def _run_interpreter_checks() -> dict[str, object]:
    results: dict[str, object] = {}

    def record(name: str, fn: Callable[[], object]) -> None:
        try:
            results[name] = fn()
        except Exception:  # reported per check; the test for it shows the traceback
            results[name] = {"error": traceback.format_exc()}

    # Before the kernels module: the CPU path must not import Triton.
    cross_merge(cross_scan(torch.randn(2, 3, 4, 5)), 4, 5)
    results["lazy_import"] = {
        "triton": "triton" in sys.modules,
        "kernels_module": "dass_distill.kernels.cross_scan_triton" in sys.modules,
    }
    m = importlib.import_module("dass_distill.kernels.cross_scan_triton")

    for seed, (layout, shape) in enumerate(CASES):
        for dtype_name, (dtype, _) in DTYPES.items():

            def check(shape=shape, dtype=dtype, channels_last=LAYOUTS[layout], seed=seed) -> dict[str, float]:
                return _check_layout(m, shape, dtype, channels_last, seed)

            record(_case_key(layout, dtype_name, shape), check)
    record("double_backward", lambda: _check_double_backward(m))
    record("dispatch", lambda: _check_dispatch(m))
    record("kernel_args", lambda: {k.__name__: _kernel_args(k) for k in (m._cross_scan_kernel, m._cross_merge_kernel)})
    record(
        "block_sizes",
        lambda: [
            [list(m.block_sizes(5, H, W, cl)) for H, W in sizes] for sizes in SAME_KERNEL_SIZES for cl in (False, True)
        ],
    )
    return results


# ---------------------------------------------------------------------------------------
# pytest side.
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def interp() -> dict[str, object]:
    """All interpreter results, computed once in a fresh process with TRITON_INTERPRET=1."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve())], env=env, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_MARKER)]
    if proc.returncode != 0 or len(lines) != 1:
        pytest.fail(
            f"interpreter subprocess failed (exit {proc.returncode})\n"
            f"--- stdout ---\n{proc.stdout[-5000:]}\n--- stderr ---\n{proc.stderr[-10000:]}"
        )
    return json.loads(lines[0][len(_MARKER) :])


def _result(interp: dict[str, object], name: str) -> object:
    assert name in interp, f"no interpreter result {name!r}"
    res = interp[name]
    if isinstance(res, dict) and "error" in res:
        pytest.fail(f"{name} raised in the interpreter subprocess:\n{res['error']}")
    return res


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout, shape", CASES, ids=[_case_key(lay, "", s).replace("--", "-") for lay, s in CASES])
@pytest.mark.parametrize("op", OPS)
def test_interpreter_matches_reference(interp, op: str, layout: str, shape: tuple[int, ...], dtype: str) -> None:
    errs = _result(interp, _case_key(layout, dtype, shape))
    tol = DTYPES[dtype][1]
    # NaN (an output element never written: outputs start as NaN) fails this comparison too.
    assert errs[op] < tol, f"{op} {_case_key(layout, dtype, shape)}: rel. error {errs[op]} (tol {tol})"


@pytest.mark.parametrize("dtype", DTYPES)
def test_interpreter_scan_is_exact(interp, dtype: str) -> None:
    # A pure copy, in every dtype: any error at all means a wrong index.
    for layout, shape in CASES:
        assert _result(interp, _case_key(layout, dtype, shape))["scan_fwd"] == 0.0, (layout, shape)


def test_interpreter_double_backward(interp) -> None:
    assert _result(interp, "double_backward") < 1e-6


@pytest.mark.parametrize("name", ["dispatch_channels_last_memory_format", "dispatch_ss2d"])
def test_interpreter_dispatch_matches_reference(interp, name: str) -> None:
    err = _result(interp, "dispatch")[name]
    assert err < 1e-5, f"{name}: rel. error {err}"


def test_cpu_path_does_not_import_triton(interp) -> None:
    assert _result(interp, "lazy_import") == {"triton": False, "kernels_module": False}


def test_sizes_are_runtime_arguments(interp) -> None:
    # Interpreted kernels have no compile cache to count: check the signature instead (the
    # CUDA test below counts compiled kernels). Only the layout flag and blocks are constexpr.
    for name, args in _result(interp, "kernel_args").items():
        assert {a for a, is_const in args.items() if is_const} == KERNEL_CONSTEXPRS, name
        assert KERNEL_SIZE_ARGS <= {a for a, is_const in args.items() if not is_const}, name


def test_block_sizes_do_not_depend_on_length(interp) -> None:
    for same in _result(interp, "block_sizes"):
        assert all(blocks == same[0] for blocks in same), same


# ---------------------------------------------------------------------------------------
# Dispatch in cross_scan.py (in-process, no Triton needed).
# ---------------------------------------------------------------------------------------


def test_cpu_dispatch_never_asks_for_triton(monkeypatch) -> None:
    def fail() -> None:
        raise AssertionError("CPU tensors must not load the Triton kernels")

    monkeypatch.setattr(cross_scan_module, "_triton_ops", fail)
    x = torch.randn(2, 3, 4, 5)
    for t in (x, x.to(memory_format=torch.channels_last), x.half()):
        torch.testing.assert_close(cross_merge(cross_scan(t), 4, 5), 4 * t.flatten(2))


def test_dispatch_routes_layouts(monkeypatch) -> None:
    calls = []
    stub = SimpleNamespace(
        cross_scan_triton=lambda x, channels_last=False: calls.append(("scan", x, channels_last)) or x,
        cross_merge_triton=lambda y, H, W: calls.append(("merge", y, (H, W))) or y,
    )
    monkeypatch.setattr(cross_scan_module, "_use_triton", lambda t: stub)
    x = torch.randn(2, 3, 4, 5)
    x_cl = x.to(memory_format=torch.channels_last)
    cross_scan(x)
    cross_scan(x_cl)
    cross_merge(torch.randn(2, 4, 3, 20), 4, 5)
    (_, a, cl_a), (_, b, cl_b), (op, _, hw) = calls
    assert a is x and not cl_a
    # channels_last memory is handed over as a contiguous (B, H, W, C) view, not copied.
    assert cl_b and b.shape == (2, 4, 5, 3) and b.is_contiguous() and b.data_ptr() == x_cl.data_ptr()
    assert op == "merge" and hw == (4, 5)


# ---------------------------------------------------------------------------------------
# CUDA (compiled kernels); these run on a GPU machine.
# ---------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _triton_module():
    return importlib.import_module("dass_distill.kernels.cross_scan_triton")


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 5, 7, 13), (3, 96, 32, 250), (2, 16, 1, 37)], ids=str)
def test_cuda_dispatch_matches_reference(dtype: str, shape: tuple[int, ...]) -> None:
    dt, tol = DTYPES[dtype]
    B, C, H, W = shape
    for memory_format in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(shape, device="cuda").to(dt).to(memory_format=memory_format).requires_grad_()
        y = cross_scan(x)
        assert type(y.grad_fn).__name__ == "CrossScanTritonBackward", "CUDA must take the Triton path"
        assert _rel_err(y.cpu(), cross_scan_ref(x.detach().cpu().double())) == 0.0
        g = torch.randn_like(y)
        y.backward(g)
        ref_merge = cross_merge_ref(g.cpu().double(), H, W)
        assert _rel_err(x.grad.cpu(), ref_merge.view(shape)) < tol
        merged = cross_merge(g, H, W)
        assert _rel_err(merged.cpu(), ref_merge) < tol


@needs_cuda
def test_cuda_new_lengths_reuse_compiled_kernels() -> None:
    m = _triton_module()

    def compiled() -> int:
        kernels = (m._cross_scan_kernel, m._cross_merge_kernel)
        return sum(len(cache[0]) for k in kernels for cache in k.device_caches.values())

    for sizes in SAME_KERNEL_SIZES:
        for channels_last in (False, True):
            counts = []
            for H, W in sizes:
                x = torch.randn(2, 5, H, W, device="cuda")
                x = x.permute(0, 2, 3, 1).contiguous() if channels_last else x
                m.cross_merge_triton(m.cross_scan_triton(x, channels_last), H, W, channels_last)
                torch.cuda.synchronize()
                counts.append(compiled())
            assert counts[1] == counts[0], f"{sizes} recompiled ({channels_last=})"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_cuda_runs_on_the_tensors_device() -> None:
    m = _triton_module()
    x = torch.randn(2, 5, 7, 13, device="cuda:1")
    with torch.cuda.device(0):
        y = m.cross_scan_triton(x)
        merged = m.cross_merge_triton(y, 7, 13)
    assert y.device == x.device and merged.device == x.device
    assert _rel_err(y.cpu(), cross_scan_ref(x.cpu().double())) == 0.0
    assert _rel_err(merged.cpu(), cross_merge_ref(cross_scan_ref(x.cpu().double()), 7, 13)) < 1e-6


if __name__ == "__main__":
    # The interpreter subprocess (see the module docstring).
    os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)
    print(_MARKER + json.dumps(_run_interpreter_checks()), flush=True)
