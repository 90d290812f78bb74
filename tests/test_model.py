"""BERT4Rec itself: shapes, padding, bidirectionality, the loss, and round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bert4rec.model import (
    BERT4Rec,
    BERT4RecConfig,
    DropoutMasks,
    _written_out_pays,
    attention,
    dropout,
)


def tiny(num_items: int = 20, **overrides: object) -> BERT4Rec:
    torch.manual_seed(0)
    config = BERT4RecConfig(num_items=num_items, max_len=8, hidden_size=16, num_layers=2,
                            num_heads=2, hidden_dropout=0.0, attention_dropout=0.0,
                            **overrides)  # type: ignore[arg-type]
    return BERT4Rec(config).eval()


def test_shapes() -> None:
    model = tiny()
    tokens = torch.tensor([[0, 0, 3, 4, 21], [1, 2, 3, 4, 5]])
    hidden = model.encode(tokens)
    assert hidden.shape == (2, 5, 16)
    assert model.logits(hidden[:, -1]).shape == (2, 20)
    scores = model.score([np.array([3, 4]), np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])])
    assert scores.shape == (2, 21)
    assert torch.isinf(scores[:, 0]).all()  # padding column is never recommended


def test_head_size_must_divide() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        BERT4RecConfig(num_items=5, hidden_size=10, num_heads=3)


@pytest.mark.parametrize(("setting", "message"), [
    ({"num_heads": 0}, "num_heads must be a positive integer"),
    ({"hidden_size": "abc"}, "hidden_size must be a positive integer"),
    ({"hidden_size": -64}, "hidden_size must be a positive integer"),
    ({"num_layers": 2.5}, "num_layers must be a positive integer"),
    ({"hidden_dropout": 2}, "hidden_dropout must be at least 0 and below 1"),
    ({"attention_dropout": -0.1}, "attention_dropout must be at least 0 and below 1"),
    ({"init_std": 0}, "init_std must be a positive number"),
])
def test_settings_out_of_range_are_refused(setting: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BERT4RecConfig(num_items=5, **setting)  # type: ignore[arg-type]


def test_numpy_integers_are_integers() -> None:
    assert BERT4RecConfig(num_items=np.int64(5), hidden_size=np.int32(16)).hidden_size == 16


def test_output_is_tied_to_item_embeddings() -> None:
    model = tiny()
    hidden = torch.randn(3, 16)
    before = model.logits(hidden)
    with torch.no_grad():
        model.item_embedding.weight[5] += 1.0  # item 5 -> logit column 4
    after = model.logits(hidden)
    changed = (before - after).abs().sum(dim=0) > 0
    assert changed.tolist() == [i == 4 for i in range(20)]


def test_padding_never_changes_a_score() -> None:
    model = tiny()
    short = torch.tensor([[3, 4, 5, 21]])
    padded = torch.tensor([[0, 0, 0, 3, 4, 5, 21]])
    a = model.encode(short)[:, -1]
    b = model.encode(padded)[:, -1]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # Batched scoring pads short histories to the longest one: same scores as alone.
    alone = model.score([np.array([3, 4, 5])])
    together = model.score([np.array([3, 4, 5]), np.array([1, 2, 3, 4, 5, 6, 7])])[:1]
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-5)


def test_padding_tokens_do_not_leak_through_attention() -> None:
    model = tiny()
    # Padding rows of the embedding are zero, but position embeddings are not: attention must
    # still ignore padded slots entirely.
    a = model.encode(torch.tensor([[0, 0, 7, 21]]))[:, -1]
    with torch.no_grad():
        model.position_embedding.weight[:5] += 10.0  # only reachable through padded slots
    b = model.encode(torch.tensor([[0, 0, 7, 21]]))[:, -1]
    torch.testing.assert_close(a, b)


def test_bidirectional_a_later_item_changes_an_earlier_position() -> None:
    model = tiny()
    a = model.encode(torch.tensor([[3, 4, 5, 6]]))
    b = model.encode(torch.tensor([[3, 4, 5, 9]]))
    assert not torch.allclose(a[:, 0], b[:, 0])


def test_loss_ignores_unmasked_positions() -> None:
    model = tiny()
    tokens = torch.tensor([[3, 21, 5, 21], [0, 7, 21, 9]])
    labels = torch.tensor([[0, 4, 0, 6], [0, 0, 8, 0]])
    loss = model.loss(tokens, labels)
    hidden = model.encode(tokens)
    logits = model.logits(hidden[labels > 0])
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([3, 5, 7]))
    torch.testing.assert_close(loss, expected)
    # Changing what unmasked positions would "predict" changes nothing.
    other = torch.tensor([[0, 4, 0, 6], [0, 0, 8, 0]])
    torch.testing.assert_close(model.loss(tokens, other), loss)


def test_loss_never_computes_logits_at_unmasked_positions(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny()
    seen: list[int] = []
    original = model.head  # the output layer starts here, for the full and sampled losses

    def spy(hidden: torch.Tensor) -> torch.Tensor:
        seen.append(hidden.shape[0])
        return original(hidden)

    monkeypatch.setattr(model, "head", spy)
    model.loss(torch.tensor([[3, 21, 5, 6, 7, 21]]), torch.tensor([[0, 4, 0, 0, 0, 8]]))
    assert seen == [2]


def test_inference_keeps_last_items_and_appends_mask() -> None:
    model = tiny()
    tokens = model.inference_tokens([np.arange(1, 13), np.array([5])])
    assert tokens.shape == (2, 8)
    assert tokens[0].tolist() == [6, 7, 8, 9, 10, 11, 12, 21]  # last max_len - 1, then [MASK]
    assert tokens[1].tolist() == [0, 0, 0, 0, 0, 0, 5, 21]
    empty = model.inference_tokens([np.array([], dtype=np.int64)])
    assert empty.tolist() == [[21]]


def test_tensor_round_trip_gives_identical_scores() -> None:
    model = tiny()
    again = BERT4Rec.from_tensors(model.config.to_dict(), model.tensors())
    histories = [np.array([1, 2, 3]), np.array([4])]
    assert torch.equal(model.score(histories), again.score(histories))


def test_truncated_normal_init() -> None:
    model = tiny()
    weight = model.item_embedding.weight[1:]
    assert weight.abs().max() <= 0.04 + 1e-6
    assert 0.01 < weight.std() < 0.03
    assert torch.equal(model.item_embedding.weight[0], torch.zeros(16))


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown model setting"):
        BERT4RecConfig.from_dict({"num_items": 3, "hidden": 4})


def test_cpu_dropout_masks_are_seeded_and_keep_the_right_share() -> None:
    shape = torch.Size([400, 500])
    a, b = DropoutMasks(3), DropoutMasks(3)
    keep = a.keep(shape, 0.2)
    assert torch.equal(keep, b.keep(shape, 0.2))
    assert abs(keep.float().mean().item() - 0.8) < 0.005
    assert not torch.equal(keep, a.keep(shape, 0.2))  # fresh masks every call
    restored = DropoutMasks(0)
    restored.set_state(json.loads(json.dumps(a.get_state())))
    assert torch.equal(a.keep(shape, 0.5), restored.keep(shape, 0.5))


def test_cpu_dropout_scales_kept_values_and_their_gradients() -> None:
    x = torch.randn(50, 60, requires_grad=True)
    y = dropout(x, 0.25, True, DropoutMasks(0))
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    y.sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    assert dropout(x, 0.25, False, DropoutMasks(0)) is x  # off outside training


def test_written_out_attention_matches_the_fused_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 4) for _ in range(3))
    attend = torch.ones(3, 1, 1, 7, dtype=torch.bool)
    attend[0, ..., :3] = False  # left padding
    masks = DropoutMasks(0)
    monkeypatch.setattr(masks, "keep", lambda shape, p: torch.ones(shape, dtype=torch.bool))
    fused = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
    # With every element kept, dropout only rescales by 1 / (1 - p).
    torch.testing.assert_close(attention(q, k, v, attend, 0.2, masks) * 0.8, fused)


def test_bf16_training_attention_matches_the_fused_kernel_and_its_gradients() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 9, 8).bfloat16().requires_grad_() for _ in range(3))
    attend = torch.ones(3, 1, 1, 9, dtype=torch.bool)
    attend[1, ..., :4] = False  # left padding
    assert _written_out_pays(q, 0.0, DropoutMasks(0))  # bf16 with gradients: written out
    with torch.no_grad():
        assert not _written_out_pays(q, 0.0, DropoutMasks(0))  # inference: the fused kernel
    assert not _written_out_pays(q.detach().float().requires_grad_(), 0.0, DropoutMasks(0))
    grad = torch.randn(3, 2, 9, 8).bfloat16()
    results = []
    for out in (attention(q, k, v, attend, 0.0, DropoutMasks(0)),
                F.scaled_dot_product_attention(q, k, v, attn_mask=attend)):
        results.append([out, *torch.autograd.grad(out, (q, k, v), grad)])
    for written, fused in zip(*results, strict=True):
        torch.testing.assert_close(written.float(), fused.float(), rtol=0.02, atol=0.02)


def test_last_only_encoding_is_the_last_slot_of_the_full_one() -> None:
    torch.manual_seed(0)
    model = BERT4Rec(BERT4RecConfig(num_items=50, max_len=12, hidden_size=16, num_layers=3,
                                    num_heads=2)).eval()
    histories = [np.arange(1, 1 + n) for n in (0, 1, 5, 11, 30)]
    tokens = model.inference_tokens(histories)  # left-padded to different lengths
    with torch.no_grad():
        full = model.encode(tokens)[:, -1]
        last = model.encode(tokens, last_only=True)
    assert last.shape == (5, 1, 16)
    torch.testing.assert_close(last[:, -1], full, rtol=1e-5, atol=1e-6)
