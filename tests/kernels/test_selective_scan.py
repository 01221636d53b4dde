"""The fused C++ CPU kernel, the pure-torch path and the dispatchers against the
sequential selective_scan_ref (float64), forward and backward."""

from __future__ import annotations

import importlib.abc
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F

from dass_distill.kernels import (
    selective_scan,
    selective_scan_cpu,
    selective_scan_fused_cpu,
    selective_scan_ref,
    selective_scan_torch,
)
from dass_distill.kernels import cpu_extension
from dass_distill.kernels.selective_scan import _cuda_selective_scan_fn

IMPLS = {"fused": selective_scan_fused_cpu, "torch": selective_scan_torch}


@pytest.fixture(params=list(IMPLS))
def scan(request):
    """Each CPU implementation in turn (the fused kernel must build on CI's machine)."""
    return IMPLS[request.param]


def _rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative L2 error; the absolute one where the reference is all zeros."""
    diff = (x.double() - ref.double()).norm()
    scale = ref.double().norm()
    return (diff / scale if scale > 0 else diff).item()


def _inputs(batch: int, dim: int, L: int, N: int, G: int, dtype=torch.float64, seed: int = 0) -> dict:
    """Realistic magnitudes: dt = softplus(randn*0.5 - 4 + bias) spans ~1e-3..0.3, A = -(1..N)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return dict(
        u=randn(batch, dim, L).to(dtype),
        delta=(randn(batch, dim, L) * 0.5 - 4.0).to(dtype),
        A=-torch.exp(torch.log(torch.arange(1, N + 1, dtype=torch.float64))).repeat(dim, 1),  # DASS init
        B=randn(batch, G, N, L).to(dtype),
        C=randn(batch, G, N, L).to(dtype),
        D=torch.ones(dim, dtype=torch.float64) + 0.1 * randn(dim),
        delta_bias=torch.rand(dim, generator=g, dtype=torch.float64) * 6 - 3,
        delta_softplus=True,
    )


def _cast_params(kw: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if k in ("A", "D", "delta_bias") else v for k, v in kw.items()}


@pytest.mark.parametrize("N", [1, 4])
@pytest.mark.parametrize("G", [1, 4])
@pytest.mark.parametrize("L", [1, 23, 301])
def test_fast_matches_reference_float64(N: int, G: int, L: int, scan) -> None:
    kw = _inputs(batch=2, dim=8, L=L, N=N, G=G, seed=N * 10 + G)
    ref = selective_scan_ref(**kw)
    out = scan(**kw)
    assert out.shape == (2, 8, L) and out.dtype == torch.float64
    assert _rel_err(out, ref) < 1e-10


@pytest.mark.parametrize("N", [1, 2])
def test_options_off(N: int, scan) -> None:
    # No D, no bias, no softplus (delta used as is), B/C given as (batch, N, L).
    kw = _inputs(batch=2, dim=6, L=57, N=N, G=1, seed=5)
    kw.update(D=None, delta_bias=None, delta_softplus=False, delta=F.softplus(kw["delta"]))
    kw["B"], kw["C"] = kw["B"][:, 0], kw["C"][:, 0]
    ref = selective_scan_ref(**kw)
    assert _rel_err(scan(**kw), ref) < 1e-10
    # Skip term: adding D must add exactly D * u.
    D = torch.randn(6, dtype=torch.float64)
    with_d = scan(**{**kw, "D": D})
    torch.testing.assert_close(with_d - scan(**kw), kw["u"] * D[:, None])


def test_non_contiguous_inputs(scan) -> None:
    # (batch, L, dim) storage seen as (batch, dim, L), as a caller's transpose would give.
    kw = _inputs(batch=2, dim=8, L=50, N=2, G=4, seed=4)
    ref = selective_scan_ref(**kw)
    for name in ("u", "delta"):
        kw[name] = kw[name].transpose(1, 2).contiguous().transpose(1, 2)
    kw["B"] = kw["B"].permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    assert not kw["u"].is_contiguous() and not kw["B"].is_contiguous()
    assert _rel_err(scan(**kw), ref) < 1e-10


def test_groups_select_their_own_B_and_C(scan) -> None:
    # Changing group 2's B/C must change channels [2*dim/G, 3*dim/G) and nothing else.
    kw = _inputs(batch=1, dim=8, L=40, N=2, G=4, seed=3)
    out = scan(**kw)
    kw["B"] = kw["B"].clone()
    kw["B"][:, 2] += 1.0
    changed = (scan(**kw) - out).abs().amax(dim=(0, 2)) > 0
    assert changed.tolist() == [False] * 4 + [True] * 2 + [False] * 2


@pytest.mark.parametrize("N", [1, 4])
def test_float32_long_sequence(N: int, scan) -> None:
    # DASS stage-1 length for a 10 s clip (64 x 128 positions), G = 4 directions.
    L = 8192
    kw64 = _inputs(batch=1, dim=8, L=L, N=N, G=4, seed=42)
    ref = selective_scan_ref(**kw64)
    kw32 = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in kw64.items()}
    out = scan(**kw32)
    assert out.dtype == torch.float32
    assert _rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("N, G, L", [(1, 4, 45), (4, 1, 45), (4, 4, 7), (1, 1, 120)])
def test_gradients_match_reference(N: int, G: int, L: int, scan) -> None:
    kw = _inputs(batch=2, dim=8, L=L, N=N, G=G, seed=L + N)
    names = ["u", "delta", "A", "B", "C", "D", "delta_bias"]
    grad_out = torch.randn(2, 8, L, dtype=torch.float64)

    def grads(fn):
        leaves = {k: kw[k].detach().clone().requires_grad_() for k in names}
        fn(**{**kw, **leaves}).backward(grad_out)
        return {k: leaves[k].grad for k in names}

    got, want = grads(scan), grads(selective_scan_ref)
    for k in names:
        assert _rel_err(got[k], want[k]) < 1e-10, k


def test_gradcheck_small(scan) -> None:
    kw = _inputs(batch=1, dim=4, L=30, N=2, G=2, seed=9)
    names = ["u", "delta", "A", "B", "C", "D", "delta_bias"]
    leaves = tuple(kw[k].detach().clone().requires_grad_() for k in names)

    def fn(*args):
        return scan(**dict(zip(names, args)), delta_softplus=True)

    assert torch.autograd.gradcheck(fn, leaves, fast_mode=True)


def test_bfloat16_inputs(scan) -> None:
    kw = _inputs(batch=2, dim=8, L=500, N=1, G=4, seed=1)
    kw_bf16 = {k: v.to(torch.bfloat16) if k in ("u", "delta", "B", "C") else v for k, v in kw.items()}
    kw_bf16 = _cast_params(kw_bf16, torch.float32)  # A, D, delta_bias stay fp32 (mamba-ssm convention)
    out = scan(**kw_bf16)
    assert out.dtype == torch.bfloat16
    # Reference on exactly the bf16-rounded values, in float64.
    kw_64 = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kw_bf16.items()}
    ref = selective_scan_ref(**kw_64)
    assert _rel_err(out, ref) < 1e-2
    assert selective_scan_ref(**kw_bf16).dtype == torch.bfloat16


def test_bad_shapes_raise(scan) -> None:
    kw = _inputs(batch=2, dim=8, L=10, N=2, G=4)
    with pytest.raises(ValueError, match="B must be"):
        scan(**{**kw, "B": kw["B"][:, :3]})  # G = 3 does not divide dim = 8
    with pytest.raises(ValueError, match="A must be"):
        scan(**{**kw, "A": kw["A"][:4]})



def test_fused_kernel_builds_here() -> None:
    # CI's machine has a C++ compiler; a silent fallback there would hide a broken kernel.
    assert cpu_extension.cpu_kernel_enabled()
    assert cpu_extension.cpu_kernel() is not None


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize(
    "batch, dim, G, N, L",
    [
        (1, 40, 1, 1, 777),  # 5 row blocks of one group: the backward splits them over tasks
        (2, 22, 2, 1, 513),  # 11 channels per group: a full block and a partial one
        (3, 6, 3, 3, 256),  # exactly one time chunk, N > 1
        (1, 9, 1, 2, 1),  # a single step
    ],
)
def test_fused_blocks_and_chunks_forward_backward(batch, dim, G, N, L, dtype, tol) -> None:
    kw = _inputs(batch=batch, dim=dim, L=L, N=N, G=G, seed=dim + L)
    names = ["u", "delta", "A", "B", "C", "D", "delta_bias"]
    grad_out = torch.randn(batch, dim, L, dtype=torch.float64)

    def run(fn, cast):
        leaves = {k: kw[k].detach().to(cast).requires_grad_() for k in names}
        out = fn(**{**kw, **leaves})
        out.backward(grad_out.to(cast))
        return out, {k: leaves[k].grad for k in names}

    out, got = run(selective_scan_fused_cpu, dtype)
    ref, want = run(selective_scan_ref, torch.float64)
    assert out.dtype == dtype and _rel_err(out, ref) < tol
    for k in names:
        assert _rel_err(got[k], want[k]) < tol, k


def test_fused_float32_extreme_deltas() -> None:
    # softplus and exp run on polynomial approximations in fp32: check them far out
    # (dt from ~1e-30 to ~60, decays from 1 down to underflow) against float64.
    kw = _inputs(batch=1, dim=8, L=600, N=2, G=2, seed=7)
    kw["delta"] = torch.linspace(-70, 60, 600, dtype=torch.float64).expand(1, 8, 600).contiguous()
    ref = selective_scan_ref(**kw)
    out = selective_scan_fused_cpu(**{k: v.float() if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
    assert torch.isfinite(out).all()
    assert _rel_err(out, ref) < 1e-5


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_cpu_dispatch_fused_when_eager_torch_ops_when_traced() -> None:
    kw = _inputs(batch=1, dim=8, L=40, N=1, G=4, dtype=torch.float32, seed=2)
    kw = _cast_params(kw, torch.float32)
    u = kw.pop("u").requires_grad_()
    out = selective_scan_cpu(u, **kw)
    assert type(out.grad_fn).__name__ == "_FusedSelectiveScanCPUBackward"
    # A traced (or exported) graph must hold torch ops only, so it runs without the kernel.
    traced = torch.jit.trace(lambda x: selective_scan_cpu(x, **kw), (u.detach(),))
    assert "PythonOp" not in str(traced.graph)
    torch.testing.assert_close(traced(u.detach()), out.detach(), rtol=1e-5, atol=1e-6)


def test_kernel_can_be_turned_off_and_failed_builds_fall_back(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    kw = _inputs(batch=1, dim=8, L=40, N=1, G=4, seed=3)
    ref = selective_scan_ref(**kw)
    try:
        monkeypatch.setenv(cpu_extension.ENV_VAR, "torch")
        cpu_extension.cpu_kernel.cache_clear()
        assert cpu_extension.cpu_kernel() is None
        assert _rel_err(selective_scan_cpu(**kw), ref) < 1e-10
        monkeypatch.delenv(cpu_extension.ENV_VAR)
        # A build that fails (here: a source that does not compile) warns once and falls back.
        bad = tmp_path / "broken.cpp"
        bad.write_text("this is not C++\n")
        monkeypatch.setattr(cpu_extension, "_SOURCE", bad)
        # Its own name: torch versions builds per name and process, so reusing the real
        # kernel's name would force a rebuild of the real kernel afterwards.
        monkeypatch.setattr(cpu_extension, "_NAME", "dass_test_broken_kernel")
        monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))
        cpu_extension.cpu_kernel.cache_clear()
        with pytest.warns(RuntimeWarning, match="could not be built"):
            assert cpu_extension.cpu_kernel() is None
        assert _rel_err(selective_scan_cpu(**kw), ref) < 1e-10
        with pytest.raises(RuntimeError, match="unavailable"):
            selective_scan_fused_cpu(**kw)
    finally:
        monkeypatch.undo()
        cpu_extension.cpu_kernel.cache_clear()


class _ImportRecorder(importlib.abc.MetaPathFinder):
    """Records (and lets fail) any attempt to import a CUDA-only module."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in ("mamba_ssm", "selective_scan_cuda", "causal_conv1d"):
            self.attempts.append(fullname)
        return None


def test_cpu_dispatch_never_imports_mamba_ssm() -> None:
    kw = _inputs(batch=1, dim=4, L=33, N=1, G=4)
    recorder = _ImportRecorder()
    sys.meta_path.insert(0, recorder)
    try:
        out = selective_scan(**kw)
    finally:
        sys.meta_path.remove(recorder)
    assert recorder.attempts == []
    assert "mamba_ssm" not in sys.modules
    torch.testing.assert_close(out, selective_scan_ref(**kw), rtol=1e-10, atol=0)


def test_fresh_interpreter_cpu_path_never_imports_cuda_modules() -> None:
    code = textwrap.dedent(
        """
        import sys, torch
        from dass_distill.kernels import selective_scan
        u = torch.randn(1, 4, 20)
        B = torch.randn(1, 4, 1, 20)
        out = selective_scan(u, torch.rand(1, 4, 20), -torch.ones(4, 1), B, B, torch.ones(4), None, True)
        out.sum().item()
        bad = [m for m in sys.modules if m.split(".")[0] in ("mamba_ssm", "selective_scan_cuda")]
        assert not bad, bad
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_missing_mamba_ssm_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the import raise ImportError, as on a machine without the extra.
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)
    _cuda_selective_scan_fn.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="selective_scan_torch"):
            assert _cuda_selective_scan_fn() is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert _cuda_selective_scan_fn() is None  # cached: no second warning
    finally:
        _cuda_selective_scan_fn.cache_clear()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("N", [1, 4])
def test_cuda_dispatch_matches_reference(N: int) -> None:
    kw = _inputs(batch=2, dim=16, L=1000, N=N, G=4, dtype=torch.float32, seed=N)
    kw = _cast_params(kw, torch.float32)
    ref = selective_scan_ref(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mamba-ssm may be absent: fallback path
        out = selective_scan(**{k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
    assert out.is_cuda and out.dtype == torch.float32
    assert _rel_err(out.cpu(), ref) < 1e-5
