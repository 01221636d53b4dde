"""The causal depthwise conv1d and the bidirectional Mamba mixer (AuM / SSAMBA) against the
float64 references of tests/mamba_reference.py, written from the architecture description
(DESIGN.md §5): a per-time-step loop for the scan, explicit shifted sums for the conv."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from dass_distill.kernels.causal_conv1d import (
    causal_conv1d,
    causal_conv1d_ref,
    causal_conv1d_torch,
)
from dass_distill.students.bimamba import BiMamba
from mamba_reference import conv_loop, mixer

VARIANTS = ("fo-fo", "fo-bi", "bi-bi")


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


# --- causal conv1d ---------------------------------------------------------------------

@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("impl", [causal_conv1d_ref, causal_conv1d_torch, causal_conv1d])
def test_causal_conv1d_matches_loop(impl, width):
    g = torch.Generator().manual_seed(width)
    x = torch.randn(2, 5, 13, generator=g, dtype=torch.float64)
    w = torch.randn(5, width, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    ref = conv_loop(x, w, b)
    assert _rel(impl(x, w, b), ref) < 1e-12
    assert _rel(impl(x, w, b, activation="silu"), F.silu(ref)) < 1e-12


def test_causal_conv1d_is_causal_and_differentiable():
    x = torch.randn(1, 3, 10, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    y = causal_conv1d_torch(x, w, b, "silu")
    y[..., 4].sum().backward()
    assert x.grad[..., 5:].abs().sum() == 0 and x.grad[..., 1:5].abs().sum() > 0
    assert torch.autograd.gradcheck(lambda *a: causal_conv1d_torch(*a, activation="silu"), (x, w, b))


def test_causal_conv1d_rejects_bad_shapes():
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d(torch.randn(1, 3, 8), torch.randn(4, 4))
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(torch.randn(1, 3, 8), torch.randn(3, 4), activation="relu")


# --- the mixer ---------------------------------------------------------------------------

def mixer_reference(m: BiMamba, hidden: torch.Tensor) -> torch.Tensor:
    """The description's mixer over the module's own parameters (named_parameters keeps the graph)."""
    p = {k: v.double() for k, v in m.named_parameters()}
    return mixer(p, "", hidden.double(), m.variant, m.divide_out)


def _perturbed(variant: str, d_model: int = 16, seed: int = 0, **kw) -> BiMamba:
    """A mixer whose constants are not at their init values (A, D, biases all distinct)."""
    torch.manual_seed(seed)
    m = BiMamba(d_model, variant=variant, **kw)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "A_" in name or name.startswith("D") or "bias" in name:
                p.add_(0.3 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("L", [1, 7, 33])
def test_mixer_matches_reference(variant, L):
    m = _perturbed(variant)
    x = torch.randn(2, L, 16)
    ref = mixer_reference(m, x)
    assert _rel(m(x), ref) < 1e-5
    assert _rel(m.double()(x.double()), ref) < 1e-9


def test_bi_bi_without_divide_out_is_twice_the_halved_output():
    torch.manual_seed(0)
    halved, summed = BiMamba(16, variant="bi-bi"), BiMamba(16, variant="bi-bi", divide_out=False)
    summed.load_state_dict(halved.state_dict())
    x = torch.randn(1, 9, 16)
    torch.testing.assert_close(summed(x), 2 * halved(x))
    assert _rel(summed.double()(x.double()), mixer_reference(summed, x)) < 1e-9


@pytest.mark.parametrize("variant", VARIANTS)
def test_mixer_directions(variant):
    """Fo-Fo is causal; the bidirectional variants see the future."""
    m = _perturbed(variant).double()
    x = torch.randn(1, 12, 16, dtype=torch.float64, requires_grad=True)
    m(x)[:, 5].sum().backward()
    future = x.grad[:, 6:].abs().sum().item()
    assert (future == 0) == (variant == "fo-fo")
    assert x.grad[:, :5].abs().sum() > 0


@pytest.mark.parametrize("variant", ["fo-bi", "bi-bi"])
def test_mixer_gradients_match_reference(variant):
    m = _perturbed(variant, d_model=8, seed=1).double()
    x = torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True)
    ref_grads = torch.autograd.grad(mixer_reference(m, x).pow(2).sum(), [x, *m.parameters()], allow_unused=True)
    grads = torch.autograd.grad(m(x).pow(2).sum(), [x, *m.parameters()])
    for (name, _), g, r in zip([("x", None), *m.named_parameters()], grads, ref_grads):
        assert r is not None, name
        assert _rel(g, r) < 1e-6, name  # A_log grads are ~1e-8 for the fast-decaying states


def test_mixer_gradcheck():
    m = _perturbed("bi-bi", d_model=4, seed=2, d_state=3).double()
    x = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


def test_mixer_parameter_names_and_init():
    m = BiMamba(32, variant="bi-bi")
    names = {n for n, _ in m.named_parameters()}
    assert names == {"in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
                     "dt_proj.bias", "A_log", "D", "A_b_log", "conv1d_b.weight", "conv1d_b.bias",
                     "x_proj_b.weight", "dt_proj_b.weight", "dt_proj_b.bias", "D_b", "out_proj.weight"}
    v1 = {n for n, _ in BiMamba(32, variant="fo-bi").named_parameters()}
    assert v1 == {"in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
                  "dt_proj.bias", "A_log", "D", "A_b_log", "out_proj.weight"}
    assert m.dt_rank == 2 and m.A_log.shape == (64, 16)
    torch.testing.assert_close(torch.exp(m.A_b_log[3]), torch.arange(1.0, 17.0))
    dt = F.softplus(m.dt_proj_b.bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert m.D._no_weight_decay and m.A_b_log._no_weight_decay
    with pytest.raises(ValueError, match="variant"):
        BiMamba(8, variant="v2")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("variant", VARIANTS)
def test_mixer_on_cuda_matches_the_cpu_path(variant):
    """On CUDA the mixer runs mamba-ssm's scan and causal-conv1d (when installed, else the torch
    path): forward and gradients equal the CPU path's within fp32 tolerance."""
    m = _perturbed(variant, d_model=64)
    x = torch.randn(2, 257, 64, requires_grad=True)
    y = m(x)
    y.pow(2).sum().backward()
    cpu_grads = [x.grad.clone(), *(p.grad.clone() for p in m.parameters())]
    mc = m.cuda()
    mc.zero_grad()
    xc = x.detach().cuda().requires_grad_()
    yc = mc(xc)
    yc.pow(2).sum().backward()
    assert _rel(yc.cpu(), y) < 1e-4
    for g, gc in zip(cpu_grads, [xc.grad, *(p.grad for p in mc.parameters())]):
        assert _rel(gc.cpu(), g) < 1e-3
