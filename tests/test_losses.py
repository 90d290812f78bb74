"""The fused, chunked full-softmax loss against ``F.cross_entropy`` on the logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bert4rec.losses import linear_cross_entropy


def _inputs(rows: int = 23, classes: int = 17, dim: int = 8, dtype: torch.dtype = torch.float64
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, dim, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(classes, dim, generator=g, dtype=dtype, requires_grad=True)
    bias = torch.randn(classes, generator=g, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, classes, (rows,), generator=g)
    return hidden, weight, bias, targets


def _reference(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(hidden @ weight.T + bias, targets)


@pytest.mark.parametrize("chunk_elements", [17, 5 * 17, 1 << 20])  # 1 row, 5 rows (23 = 4*5+3), all
def test_value_and_gradients_match_cross_entropy(chunk_elements: int) -> None:
    hidden, weight, bias, targets = _inputs()
    want = _reference(hidden, weight, bias, targets)
    want_grads = torch.autograd.grad(want * 3.0, (hidden, weight, bias))
    got = linear_cross_entropy(hidden, weight, bias, targets, chunk_elements=chunk_elements)
    got_grads = torch.autograd.grad(got * 3.0, (hidden, weight, bias))  # a scaled output too
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w)


def test_gradients_reach_a_tied_weight_through_its_view() -> None:
    hidden, _, bias, targets = _inputs(classes=16)
    table = torch.randn(17, 8, dtype=torch.float64, requires_grad=True)  # row 0: padding
    linear_cross_entropy(hidden, table[1:], bias, targets).backward()
    assert table.grad is not None
    assert torch.equal(table.grad[0], torch.zeros(8, dtype=torch.float64))
    (want,) = torch.autograd.grad(_reference(hidden, table[1:], bias, targets), table)
    torch.testing.assert_close(table.grad, want)


def test_without_gradients_only_the_loss_is_computed() -> None:
    hidden, weight, bias, targets = _inputs()
    with torch.no_grad():
        got = linear_cross_entropy(hidden, weight, bias, targets, chunk_elements=40)
    assert got.grad_fn is None
    torch.testing.assert_close(got, _reference(hidden, weight, bias, targets).detach())


def test_bf16_autocast_stays_close_to_fp32() -> None:
    hidden, weight, bias, targets = _inputs(rows=64, classes=300, dim=32, dtype=torch.float32)
    want = _reference(hidden, weight, bias, targets)
    want_grads = torch.autograd.grad(want, (hidden, weight, bias))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(hidden, weight, bias, targets, chunk_elements=1000)
    assert got.dtype == torch.float32
    got_grads = torch.autograd.grad(got, (hidden, weight, bias))
    torch.testing.assert_close(got, want, rtol=2e-2, atol=0.0)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=0.0, atol=3e-2 * float(w.abs().max()))


def test_no_bias_is_a_zero_bias() -> None:
    hidden, weight, _, targets = _inputs()
    got = linear_cross_entropy(hidden, weight, None, targets, chunk_elements=40)
    torch.testing.assert_close(got, F.cross_entropy(hidden @ weight.T, targets))
