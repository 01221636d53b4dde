"""linear_scan (chunked) against the sequential float64 loop: values, gradients, dtypes."""

from __future__ import annotations

import pytest
import torch

from dass_distill.kernels import linear_scan
from dass_distill.kernels.linear_scan import _chunked_scan, linear_scan_ref, linear_scan_static


def _rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def _inputs(shape: tuple[int, ...], mixed_signs: bool, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    if mixed_signs:
        # |a| up to 1.05: growth as well as decay, and sign flips.
        a = (torch.rand(shape, generator=g, dtype=torch.float64) * 2.1 - 1.05).to(dtype)
    else:
        a = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)  # (0, 1), as exp(dt*A)
    b = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    h0 = torch.randn(shape[:-1], generator=g, dtype=torch.float64).to(dtype)
    return a, b, h0


# 1, 2, 7: sequential path; 1000: chunked with a recursive carry scan; 4097 (= 17 * 241):
# no divisor near sqrt(L), so the padded path.
@pytest.mark.parametrize("L", [1, 2, 7, 25, 1000, 4097])
@pytest.mark.parametrize("with_h0", [False, True])
def test_forward_matches_sequential(L: int, with_h0: bool) -> None:
    a, b, h0 = _inputs((3, 4, L), mixed_signs=False, seed=L)
    h0 = h0 if with_h0 else None
    out = linear_scan(a, b, h0)
    ref = linear_scan_ref(a, b, h0)
    assert out.shape == ref.shape and out.dtype == torch.float64
    assert _rel_err(out, ref) < 1e-13


@pytest.mark.parametrize("L", [1, 3, 26, 1000])
def test_internal_reverse_scan_with_initial_state(L: int) -> None:
    # The backward pass uses the reverse direction; check it (with h0) against flipped time.
    a, b, h0 = _inputs((5, L), mixed_signs=True, seed=L)
    a_in, b_in = a.clone(), b.clone()
    out = _chunked_scan(a, b, h0, L, reverse=True)
    expected = linear_scan_ref(a.flip(-1), b.flip(-1), h0).flip(-1)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14)
    assert torch.equal(a, a_in) and torch.equal(b, b_in)  # inputs untouched


@pytest.mark.parametrize("L", [1, 2, 30, 1000])
def test_inputs_are_not_modified(L: int) -> None:
    a, b, h0 = _inputs((1, L), mixed_signs=False, seed=L)
    a_in, b_in, h0_in = a.clone(), b.clone(), h0.clone()
    linear_scan(a, b, h0)
    assert torch.equal(a, a_in) and torch.equal(b, b_in) and torch.equal(h0, h0_in)


@pytest.mark.parametrize("L", [7, 30, 200, 777])
def test_forward_mixed_signs_and_growth(L: int) -> None:
    a, b, h0 = _inputs((2, 3, L), mixed_signs=True, seed=L)
    a[0, 0, L // 2] = 0.0  # an exact reset must also propagate
    a[1, 2, :5] = 1.3
    out = linear_scan(a, b, h0)
    ref = linear_scan_ref(a, b, h0)
    assert _rel_err(out, ref) < 1e-12


def test_closed_form_constant_decay() -> None:
    # h_t = sum_{s<=t} a^(t-s) b_s with h0 = 1 -> a^(t+1) + (1 - a^(t+1)) / (1 - a) for b = 1.
    L, a_val = 5000, 0.999
    a = torch.full((1, L), a_val, dtype=torch.float64)
    b = torch.ones(1, L, dtype=torch.float64)
    t = torch.arange(1, L + 1, dtype=torch.float64)
    expected = a_val**t + (1 - a_val**t) / (1 - a_val)
    out = linear_scan(a, b, torch.ones(1, dtype=torch.float64))[0]
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("L", [2, 7, 1000, 4097])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("mixed_signs", [False, True])
def test_backward_matches_sequential(L: int, with_h0: bool, mixed_signs: bool) -> None:
    a, b, h0 = _inputs((2, 3, L), mixed_signs=mixed_signs, seed=L + 7)
    grad_out = torch.randn(2, 3, L, dtype=torch.float64)
    leaves = [a, b] + ([h0] if with_h0 else [])

    def grads(fn):
        xs = [x.detach().clone().requires_grad_() for x in leaves]
        fn(xs[0], xs[1], xs[2] if with_h0 else None).backward(grad_out)
        return [x.grad for x in xs]

    for got, want in zip(grads(linear_scan), grads(linear_scan_ref)):
        assert _rel_err(got, want) < 1e-12


# 5: sequential path; 41 (prime): padded chunks; 130, 1000 (recursive carry scan) with
# gradcheck's fast mode (random projections) to stay quick.
@pytest.mark.parametrize("L, fast_mode", [(5, False), (41, False), (130, True), (1000, True)])
def test_gradcheck(L: int, fast_mode: bool) -> None:
    g = torch.Generator().manual_seed(L)
    a = (torch.rand(2, L, generator=g, dtype=torch.float64) * 1.6 - 0.8).requires_grad_()
    b = torch.randn(2, L, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(linear_scan, (a, b, h0), fast_mode=fast_mode)
    assert torch.autograd.gradcheck(lambda a, b: linear_scan(a, b), (a, b), fast_mode=fast_mode)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype: torch.dtype) -> None:
    a, b, h0 = _inputs((4, 3000), mixed_signs=False, seed=3, dtype=dtype)
    a = a * 0.1 + 0.9  # long memory, like small dt
    out = linear_scan(a, b, h0)
    assert out.dtype == dtype
    ref = linear_scan_ref(a.double(), b.double(), h0.double())
    # fp32 accumulation inside: only the final rounding to dtype remains.
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert _rel_err(out, ref) < tol


def test_low_precision_gradients_keep_dtypes() -> None:
    a = (torch.rand(3, 100) * 0.5 + 0.5).to(torch.bfloat16).requires_grad_()
    b = torch.randn(3, 100, dtype=torch.float32, requires_grad=True)
    out = linear_scan(a, b)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert a.grad.dtype == torch.bfloat16 and b.grad.dtype == torch.float32
    a64, b64 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    linear_scan_ref(a64, b64).sum().backward()
    assert _rel_err(b.grad, b64.grad) < 1e-6
    assert _rel_err(a.grad, a64.grad) < 1e-2


def test_non_contiguous_and_broadcast_inputs() -> None:
    a, b, h0 = _inputs((50, 6), mixed_signs=False, seed=11)
    # Transposed views (time last but not contiguous) and a broadcast decay per channel.
    out = linear_scan(a.t(), b.t(), h0[:6])
    torch.testing.assert_close(out, linear_scan_ref(a.t(), b.t(), h0[:6]), rtol=1e-12, atol=0)
    a_chan = torch.rand(6, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    out = linear_scan(a_chan, b.t())
    # atol: addcmul may fuse the multiply-add where the reference rounds twice; on an h that
    # nearly cancels to 0 that one-ulp difference exceeds any relative bound.
    torch.testing.assert_close(out, linear_scan_ref(a_chan.expand(6, 50), b.t()), rtol=1e-12, atol=1e-14)


def test_long_sequence_few_channels() -> None:
    # The regime the chunked algorithm exists for: a sequential loop would take ~L Python ops.
    L = 300_001
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, L, generator=g, dtype=torch.float64) * 0.02 + 0.98
    b = torch.randn(2, L, generator=g, dtype=torch.float64)
    out = linear_scan(a, b)
    # Check a few windows exactly against the recurrence restarted from out's own state.
    for start in (0, 12_345, L - 100):
        h0 = out[:, start - 1] if start else None
        window = linear_scan_ref(a[:, start : start + 100], b[:, start : start + 100], h0)
        torch.testing.assert_close(out[:, start : start + 100], window, rtol=1e-12, atol=1e-12)


def test_empty_and_mismatched() -> None:
    out = linear_scan(torch.rand(3, 0), torch.rand(3, 0))
    assert out.shape == (3, 0)
    with pytest.raises(ValueError):
        linear_scan(torch.rand(3, 5), torch.rand(3, 6))


# --------------------------------------------------------------------------- static graph form
@pytest.mark.parametrize("L", [1, 2, 15, 16, 17, 31, 32, 33, 1000, 4097])
@pytest.mark.parametrize("mixed_signs", [False, True])
def test_static_matches_sequential(L: int, mixed_signs: bool) -> None:
    a, b, _ = _inputs((3, 4, L), mixed_signs=mixed_signs, seed=L)
    out = linear_scan_static(a, b)
    assert out.shape == (3, 4, L) and out.dtype == torch.float64
    assert _rel_err(out, linear_scan_ref(a, b)) < 1e-12


def test_static_long_sequence_and_broadcast() -> None:
    # Many doubling steps in use (L / 16 = 12500 chunks > 2^13), and a per-channel decay.
    L = 200_003
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 1, generator=g, dtype=torch.float64) * 0.02 + 0.98
    b = torch.randn(2, L, generator=g, dtype=torch.float64)
    out = linear_scan_static(a, b)
    torch.testing.assert_close(out, linear_scan(a.expand(2, L), b), rtol=1e-10, atol=1e-10)


def test_static_one_exported_graph_serves_every_length() -> None:
    class Scan(torch.nn.Module):
        def forward(self, a, b):
            return linear_scan_static(a, b)

    L = torch.export.Dim.DYNAMIC
    a, b, _ = _inputs((2, 300), mixed_signs=False, seed=0, dtype=torch.float32)
    graph = torch.export.export(Scan(), (a, b), dynamic_shapes=({1: L}, {1: L})).module()
    for n in (2, 16, 17, 300, 4099, 70_000):  # a multiple of 16 and lengths far from the sample
        a, b, _ = _inputs((2, n), mixed_signs=True, seed=n, dtype=torch.float32)
        assert _rel_err(graph(a, b), linear_scan_ref(a.double(), b.double())) < 1e-5, n
