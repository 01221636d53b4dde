"""cross_scan / cross_merge: index layout, adjointness, autograd, TorchScript and ONNX export."""

from __future__ import annotations

import io

import pytest
import torch

from dass_distill.kernels import cross_merge, cross_scan


def _naive_cross_scan(x: torch.Tensor) -> torch.Tensor:
    """Index-by-index construction of the four scan orders (the definition, no vectorisation)."""
    B, C, H, W = x.shape
    rows = [(h, w) for h in range(H) for w in range(W)]
    cols = [(h, w) for w in range(W) for h in range(H)]
    orders = [rows, cols, rows[::-1], cols[::-1]]
    out = x.new_empty(B, 4, C, H * W)
    for k, order in enumerate(orders):
        for i, (h, w) in enumerate(order):
            out[:, k, :, i] = x[:, :, h, w]
    return out


@pytest.mark.parametrize("H, W", [(1, 1), (3, 5), (4, 4), (7, 2)])
def test_cross_scan_matches_definition(H: int, W: int) -> None:
    x = torch.randn(2, 3, H, W)
    y = cross_scan(x)
    assert y.shape == (2, 4, 3, H * W)
    torch.testing.assert_close(y, _naive_cross_scan(x), rtol=0, atol=0)


def test_cross_scan_directions_explicit() -> None:
    x = torch.arange(6.0).view(1, 1, 2, 3)  # [[0, 1, 2], [3, 4, 5]]
    y = cross_scan(x)[0, :, 0]
    expected = torch.tensor(
        [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]], dtype=torch.float32
    )
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


@pytest.mark.parametrize("H, W", [(5, 7), (9, 3), (1, 11)])
def test_cross_merge_is_adjoint(H: int, W: int) -> None:
    g = torch.Generator().manual_seed(H * 100 + W)
    x = torch.randn(2, 3, H, W, dtype=torch.float64, generator=g)
    y = torch.randn(2, 4, 3, H * W, dtype=torch.float64, generator=g)
    lhs = (cross_scan(x) * y).sum()
    rhs = (x.flatten(2) * cross_merge(y, H, W)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=0)


def test_cross_merge_matches_scatter_definition() -> None:
    H, W = 3, 5
    y = torch.randn(2, 4, 3, H * W, dtype=torch.float64)
    # Adjoint of a gather is a scatter-add into the same positions.
    expected = torch.zeros(2, 3, H * W, dtype=torch.float64)
    index = _naive_cross_scan(torch.arange(H * W, dtype=torch.float64).view(1, 1, H, W))[0, :, 0].long()
    for k in range(4):
        expected.index_add_(2, index[k], y[:, k])
    torch.testing.assert_close(cross_merge(y, H, W), expected, rtol=0, atol=1e-15)


def test_merge_of_scan_is_four_times_identity() -> None:
    x = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    torch.testing.assert_close(cross_merge(cross_scan(x), 6, 7), 4 * x.flatten(2))


def test_backward_of_each_is_the_other() -> None:
    H, W = 5, 3
    x = torch.randn(2, 3, H, W, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 4, 3, H * W, dtype=torch.float64)
    cross_scan(x).backward(g)
    torch.testing.assert_close(x.grad.flatten(2), cross_merge(g, H, W))

    y = torch.randn(2, 4, 3, H * W, dtype=torch.float64, requires_grad=True)
    gm = torch.randn(2, 3, H * W, dtype=torch.float64)
    cross_merge(y, H, W).backward(gm)
    torch.testing.assert_close(y.grad, cross_scan(gm.view(2, 3, H, W)))


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError):
        cross_scan(torch.randn(2, 3, 4))
    with pytest.raises(ValueError):
        cross_merge(torch.randn(2, 4, 3, 12), 3, 5)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript() -> None:
    x = torch.randn(2, 3, 5, 7)
    scan = torch.jit.script(cross_scan)
    merge = torch.jit.script(cross_merge)
    torch.testing.assert_close(merge(scan(x), 5, 7), cross_merge(cross_scan(x), 5, 7), rtol=0, atol=0)


class _ScanMerge(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        weights = torch.arange(1, 5, dtype=x.dtype).view(1, 4, 1, 1)  # tells the directions apart
        return cross_merge(cross_scan(x) * weights, H, W)


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_onnx_export(dynamo: bool) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    x = torch.randn(2, 3, 5, 7)
    buf = io.BytesIO()
    torch.onnx.export(_ScanMerge().eval(), (x,), buf, dynamo=dynamo, input_names=["x"], output_names=["y"])
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), _ScanMerge()(x), rtol=1e-6, atol=1e-6)
