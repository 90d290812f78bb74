"""Explanations: counterfactuals against separate forward passes, the explicit attention forward
against the model, rollout, gradient x input, the greedy set, the CLI and the plots."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bert4rec import explain as ex
from bert4rec.cli import main
from bert4rec.data import PrepareOptions, prepare_frame
from bert4rec.errors import DataError
from bert4rec.explain_plots import plot_attention, plot_attribution
from bert4rec.model import BERT4Rec, BERT4RecConfig
from bert4rec.recommender import recommend
from bert4rec.runs import load_model, save_run
from bert4rec.synthetic import generate

PNG = b"\x89PNG\r\n\x1a\n"


def tiny_model(seed: int = 0, max_len: int = 12, num_items: int = 30) -> BERT4Rec:
    """A random model with a sharper output than the initialisation gives, so that removing an
    item visibly moves scores and ranks."""
    torch.manual_seed(seed)
    model = BERT4Rec(BERT4RecConfig(num_items=num_items, max_len=max_len, hidden_size=16,
                                    num_heads=2, num_layers=2))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(20.0 if p.dim() > 1 else 1.0)
    return model.eval()


HISTORY = np.array([3, 5, 7, 9, 11, 2, 4, 13])


def test_leave_one_out_matches_separate_forward_passes() -> None:
    model = tiny_model()
    item = 20
    loo = ex.leave_one_out(model, HISTORY, item, k=5)
    full = model.score([HISTORY])[0]
    assert loo.score == pytest.approx(float(full[item]), abs=1e-5)
    for i in range(len(HISTORY)):
        scores = model.score([np.delete(HISTORY, i)])[0]
        assert loo.scores_without[i] == pytest.approx(float(scores[item]), abs=1e-5)
        scores[torch.as_tensor(HISTORY)] = -torch.inf  # the original history stays excluded
        scores[0] = -torch.inf
        assert loo.ranks_without[i] == 1 + int((scores > scores[item]).sum())
    assert np.allclose(loo.score_drops, loo.score - loo.scores_without)
    assert (loo.leaves_top_k == ((loo.rank <= 5) & (loo.ranks_without > 5))).all()


def test_an_item_outside_the_top_k_never_leaves_it() -> None:
    model = tiny_model()
    ids, _ = recommend(model, [HISTORY], k=12)
    loo = ex.leave_one_out(model, HISTORY, int(ids[0, -1]), k=3)
    assert loo.rank == 12 and (loo.ranks_without > 3).all()
    assert not loo.leaves_top_k.any()


def test_leave_one_out_rank_matches_recommend() -> None:
    model = tiny_model(seed=1)
    ids, _ = recommend(model, [HISTORY], k=3)
    for rank, item in enumerate(ids[0], start=1):
        assert ex.leave_one_out(model, HISTORY, int(item), k=3).rank == rank


def test_leave_one_out_in_bf16_is_close() -> None:
    model = tiny_model()
    fp32 = ex.leave_one_out(model, HISTORY, 20)
    bf16 = ex.leave_one_out(model, HISTORY, 20, precision="bf16")
    scale = np.abs(fp32.scores_without).max()
    assert np.abs(fp32.scores_without - bf16.scores_without).max() < 0.05 * scale + 0.05


def test_only_the_window_the_model_sees_is_explained() -> None:
    model = tiny_model(max_len=6)
    long = np.arange(1, 15)
    loo = ex.leave_one_out(model, long, 20)
    assert len(loo.scores_without) == 5  # max_len - 1
    assert loo.score == pytest.approx(float(model.score([long])[0, 20]), abs=1e-5)
    ids, _ = recommend(model, [long], k=30)
    assert loo.rank == 1 + list(ids[0]).index(20)  # the whole history stays excluded
    for i in range(5):
        # Without window item i the older item 9 moves into the window, as it would for the
        # user's history without that item.
        without = np.delete(long, 9 + i)
        assert loo.scores_without[i] == pytest.approx(
            float(model.score([without])[0, 20]), abs=1e-5)
        ids, _ = recommend(model, [without], k=30)
        excluded = set(long.tolist()) - set(without.tolist())  # the removed item is seen too
        ranked = [int(j) for j in ids[0] if int(j) not in excluded]
        assert loo.ranks_without[i] == 1 + ranked.index(20)
    greedy = ex.greedy_counterfactual(model, long, 20, k=1, max_steps=3, stop_when_found=False)
    scores, ranks = ex.removal_ranks(model, long, 20, [greedy.positions])
    assert ranks[0] == greedy.steps[-1].rank
    expected = model.score([np.delete(long, [9 + p for p in greedy.positions])])[0, 20]
    assert scores[0] == pytest.approx(float(expected), abs=1e-5)


def test_explicit_attention_forward_gives_the_model_s_scores() -> None:
    model = tiny_model()
    histories = [HISTORY, HISTORY[:3], np.array([7])]  # padded rows too
    tokens = model.inference_tokens(histories)
    with torch.no_grad():
        hidden, weights = ex.encode_with_attention(model, tokens)
        expected = model.encode(tokens)
        assert torch.allclose(hidden, expected, atol=1e-5)
        assert torch.allclose(model.logits(hidden[:, -1]), model.score(histories)[:, 1:],
                              atol=1e-4)
    assert len(weights) == 2 and weights[0].shape == (3, 2, tokens.shape[1], tokens.shape[1])
    real = tokens != 0  # (B, T)
    for w in weights:
        sums = (w * real[:, None, None, :]).sum(dim=-1)
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
        assert (w[~real[:, None, None, :].expand_as(w)] == 0).all()  # padding gets nothing


def test_attention_maps_and_rollout_are_normalised() -> None:
    model = tiny_model()
    maps = ex.attention_maps(model, HISTORY)
    assert maps.weights.shape == (2, 2, len(HISTORY))
    assert maps.mask_self.shape == (2, 2)
    assert np.allclose(maps.weights.sum(axis=-1) + maps.mask_self, 1.0, atol=1e-5)
    assert maps.rollout.shape == (len(HISTORY),)
    assert (maps.rollout >= 0).all()
    assert maps.rollout.sum() + maps.rollout_mask_self == pytest.approx(1.0, abs=1e-5)
    assert maps.last_layer_mean.shape == (len(HISTORY),)


def test_rollout_of_uniform_attention_and_of_identity() -> None:
    t = 4
    uniform = torch.full((2, 3, t, t), 1.0 / t)
    flow = ex.attention_rollout(uniform)
    assert torch.allclose(flow.sum(dim=-1), torch.ones(t))
    # One layer by hand: 0.5 * uniform + 0.5 * I; two identical layers: its square.
    one = 0.5 * torch.full((t, t), 1.0 / t) + 0.5 * torch.eye(t)
    assert torch.allclose(flow, one @ one, atol=1e-6)
    identity = torch.eye(t).expand(1, 2, t, t)
    assert torch.allclose(ex.attention_rollout(identity), torch.eye(t))


def test_rollout_sends_nothing_to_padding() -> None:
    model = tiny_model()
    tokens = model.inference_tokens([HISTORY, HISTORY[:3]])  # row 1 is left-padded
    with torch.no_grad():
        _, weights = ex.encode_with_attention(model, tokens)
    real = tokens[1] != 0
    flow = ex.attention_rollout(torch.stack([w[1] for w in weights]), keys=real)
    assert (flow[real][:, ~real] == 0).all()
    assert torch.allclose(flow[real].sum(dim=-1), torch.ones(int(real.sum())), atol=1e-5)
    # The padded row's rollout over its real tokens is the unpadded sequence's own.
    alone = model.inference_tokens([HISTORY[:3]])
    with torch.no_grad():
        _, alone_weights = ex.encode_with_attention(model, alone)
    expected = ex.attention_rollout(torch.stack([w[0] for w in alone_weights]))
    assert torch.allclose(flow[real][:, real], expected, atol=1e-5)


def test_gradient_x_input_is_the_gradient_dotted_with_the_embedding() -> None:
    model = tiny_model()
    item = 20
    attribution = ex.gradient_x_input(model, HISTORY, item)
    assert attribution.shape == (len(HISTORY),)
    # Finite differences along each item's own embedding: d/de score(e + eps e) at eps = 0.
    tokens = model.inference_tokens([HISTORY])
    base = model.item_embedding(tokens).detach()
    positions = torch.arange(model.config.max_len - tokens.shape[1], model.config.max_len)
    eps = 1e-3

    def score(embedded: torch.Tensor) -> float:
        h = model.embedding_norm(embedded + model.position_embedding(positions)[None])
        attend = (tokens != 0)[:, None, None, :]
        for block in model.blocks:
            h = block(h, attend)
        return float(model.logits(h[:, -1])[0, item - 1])

    with torch.no_grad():
        for i in (0, 3, len(HISTORY) - 1):
            up, down = base.clone(), base.clone()
            up[0, i] *= 1 + eps
            down[0, i] *= 1 - eps
            estimate = (score(up) - score(down)) / (2 * eps)
            assert attribution[i] == pytest.approx(estimate, rel=0.05, abs=1e-3)


def test_greedy_set_drops_the_item_out_of_the_top_k() -> None:
    model = tiny_model()
    k = 3
    ids, _ = recommend(model, [HISTORY], k=k)
    found = 0
    for item in ids[0]:
        result = ex.greedy_counterfactual(model, HISTORY, int(item), k=k, max_steps=8)
        assert [s.position for s in result.steps] == result.positions
        assert len(set(result.positions)) == len(result.positions)
        if result.found:
            found += 1
            scores = model.score([np.delete(HISTORY, result.positions)])[0]
            scores[torch.as_tensor(HISTORY)] = -torch.inf
            scores[0] = -torch.inf
            assert 1 + int((scores > scores[int(item)]).sum()) > k
            assert result.steps[-1].rank > k
            # Greedy stops at the first success: every earlier step still kept it in the top-k.
            assert all(s.rank <= k for s in result.steps[:-1])
    assert found >= 1


def test_greedy_set_of_an_item_outside_the_top_k_is_empty() -> None:
    model = tiny_model()
    ids, _ = recommend(model, [HISTORY], k=20)
    result = ex.greedy_counterfactual(model, HISTORY, int(ids[0, -1]), k=3)
    assert result.found and result.positions == [] and result.steps == []


def test_greedy_without_stopping_runs_every_step() -> None:
    model = tiny_model()
    result = ex.greedy_counterfactual(model, HISTORY, 20, k=3, max_steps=4,
                                      stop_when_found=False)
    assert len(result.positions) == 4


def test_removal_ranks_match_leave_one_out() -> None:
    model = tiny_model()
    loo = ex.leave_one_out(model, HISTORY, 20)
    scores, ranks = ex.removal_ranks(model, HISTORY, 20, [[i] for i in range(len(HISTORY))])
    assert np.allclose(scores, loo.scores_without, atol=1e-5)
    assert (ranks == loo.ranks_without).all()
    # Sets of different sizes in one batch: padding changes no score.
    mixed, _ = ex.removal_ranks(model, HISTORY, 20, [[0], [1, 2], [], [0, 1, 2, 3]])
    for row, removed in enumerate([[0], [1, 2], [], [0, 1, 2, 3]]):
        alone = model.score([np.delete(HISTORY, removed)])[0, 20]
        assert mixed[row] == pytest.approx(float(alone), abs=1e-4)


# ----------------------------------------------------------------------------------------------
# A saved run: explain() in original ids, the CLI, the plots.


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    frame = generate(num_users=30, num_items=25, min_length=5, max_length=10, seed=0)
    data = prepare_frame(frame, PrepareOptions(min_user_count=0))
    model = tiny_model(num_items=data.num_items)
    titles = {item: f"Title of {item}" for item in data.vocab.item_ids.tolist()[:10]}
    save_run(tmp_path / "run", "bert4rec", model.config_dict(), model.tensors(), data,
             PrepareOptions(min_user_count=0), titles=titles)
    return tmp_path / "run"


def _history(run: Path, n: int = 6) -> list[str]:
    _, info = load_model(run)
    return [str(v) for v in info.vocab.item_ids[:n]]


def test_explain_top_recommendation_in_original_ids(run_dir: Path) -> None:
    model, info = load_model(run_dir)
    history = _history(run_dir)
    result = ex.explain(model, info, [*history, "nope"], k=5)
    top, _ = recommend(model, [info.vocab.encode(history)[0]], k=1)
    assert result.item == info.vocab.decode(top[0])[0]
    assert result.rank == 1 and result.skipped == ["nope"] and result.truncated == 0
    assert [str(r.item) for r in result.history] == history
    assert result.history[0].title == f"Title of {history[0]}"
    assert result.counterfactual_set.method == "greedy"
    data = result.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert set(data["notes"]) == {"counterfactual", "gradient_x_input", "attention",
                                  "counterfactual_set"}
    assert "weaker" in data["attention"]["note"]


def test_explain_in_bf16_explains_its_own_top_1(run_dir: Path) -> None:
    model, info = load_model(run_dir)
    rng = np.random.default_rng(0)
    # Among these 80 histories, two have a different top-1 in bf16 than in fp32.
    for _ in range(80):
        history = rng.choice(np.arange(1, info.vocab.num_items + 1), size=5, replace=False)
        result = ex.explain(model, info, info.vocab.decode(history), k=3, max_steps=1,
                            precision="bf16")
        assert result.rank == 1


def test_explain_of_an_item_outside_the_top_k_says_so(run_dir: Path) -> None:
    model, info = load_model(run_dir)
    history = _history(run_dir)
    ids, _ = recommend(model, [info.vocab.encode(history)[0]], k=6)
    result = ex.explain(model, info, history, item=info.vocab.decode(ids[0])[5], k=2)
    assert result.rank == 6 and "outside the top-2" in result.notes["rank"]
    assert not any(r.leaves_top_k for r in result.history)
    assert result.counterfactual_set.found and result.counterfactual_set.items == []


def test_gradients_under_inference_mode() -> None:
    model = tiny_model()
    expected = ex.gradient_x_input(model, HISTORY, 20)
    with torch.inference_mode():
        assert np.allclose(ex.gradient_x_input(model, HISTORY, 20), expected)


def test_explain_errors(run_dir: Path) -> None:
    model, info = load_model(run_dir)
    history = _history(run_dir)
    with pytest.raises(DataError, match="the history is empty"):
        ex.explain(model, info, [])
    with pytest.raises(DataError, match=r"no item the model knows \(unknown: x y\)"):
        ex.explain(model, info, ["x", "y"])
    with pytest.raises(DataError, match="item 'zzz' is not known to the model"):
        ex.explain(model, info, history, item="zzz")
    with pytest.raises(DataError, match="is in the history"):
        ex.explain(model, info, history, item=history[0])
    with pytest.raises(DataError, match="k must be at least 1"):
        ex.explain(model, info, history, k=0)


def test_explanations_need_bert4rec(run_dir: Path) -> None:
    from bert4rec.baselines.pop import PopularityRecommender

    _, info = load_model(run_dir)
    pop = PopularityRecommender(torch.arange(info.vocab.num_items + 1, dtype=torch.float32))
    with pytest.raises(DataError, match="explanations need a bert4rec run; this run's model "
                       "is 'pop'"):
        ex.explain(pop, info, _history(run_dir))


def test_cli_explain_text(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    history = _history(run_dir)
    threads = torch.get_num_threads()
    try:
        assert main(["explain", "--run", str(run_dir), "--history",
                     " ".join([*history, "nope"]), "-k", "5", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    assert "skipped 1 unknown item(s): nope" in captured.err
    assert captured.out.startswith("Why ")
    assert "Counterfactual (exact)" in captured.out
    assert "Counterfactual set (greedy" in captured.out
    assert "weaker" in captured.out
    assert f"Title of {history[0]}" in captured.out


def test_cli_explain_json_and_plots(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history = _history(run_dir)
    model, info = load_model(run_dir)
    ids, _ = recommend(model, [info.vocab.encode(history)[0]], k=3)
    item = str(info.vocab.decode(ids[0])[2])
    plots = tmp_path / "plots"
    assert main(["explain", "--run", str(run_dir), "--history", ",".join(history), "--item",
                 item, "-k", "3", "--json", "--plot-dir", str(plots)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert str(out["item"]) == item and out["rank"] == 3 and out["k"] == 3
    assert len(out["history"]) == len(history)
    assert {"score_drop", "rank_without", "leaves_top_k", "gradient_x_input",
            "attention_rollout", "attention_last_layer"} <= set(out["history"][0])
    assert np.asarray(out["attention"]["weights"]).shape == (2, 2, len(history))
    assert sorted(Path(p).name for p in out["plots"]) == ["attention.png", "attribution.png"]
    for name in ("attention.png", "attribution.png"):
        data = (plots / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 1000


def test_cli_explain_errors(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    history = " ".join(_history(run_dir))
    assert main(["explain", "--run", str(run_dir), "--history", history, "--item",
                 "zzz"]) == 2
    assert "item 'zzz' is not known to the model" in capsys.readouterr().err
    assert main(["explain", "--run", str(run_dir), "--history", " "]) == 2
    assert "the history is empty" in capsys.readouterr().err
    assert main(["explain", "--run", str(run_dir), "--history", "x y"]) == 2
    assert "no item the model knows (unknown: x y)" in capsys.readouterr().err
    assert main(["explain", "--run", str(run_dir), "--history", history, "--rows", "-1"]) == 2
    assert "--rows must be at least 0" in capsys.readouterr().err


def test_plots_of_a_long_history_are_valid_png(tmp_path: Path) -> None:
    model = tiny_model(max_len=60, num_items=80)
    frame = generate(num_users=10, num_items=80, min_length=60, max_length=70, seed=0)
    data = prepare_frame(frame, PrepareOptions(min_user_count=0))
    model = tiny_model(max_len=60, num_items=data.num_items)
    save_run(tmp_path / "run", "bert4rec", model.config_dict(), model.tensors(), data,
             PrepareOptions(min_user_count=0))
    model, info = load_model(tmp_path / "run")
    result = ex.explain(model, info, [str(v) for v in info.vocab.item_ids[:55]], k=5,
                        max_steps=2)
    for plot, name in ((plot_attribution, "a.png"), (plot_attention, "b.png")):
        path = plot(result, tmp_path / "out" / name)
        assert path.read_bytes().startswith(PNG)


def test_plots_take_dollar_signs_as_text(run_dir: Path) -> None:
    from bert4rec.explain_plots import attention_png, attribution_png

    model, info = load_model(run_dir)
    result = ex.explain(model, info, _history(run_dir), k=3, max_steps=1)
    rows = [replace(r, title=r"Save $\nosuch$ now, $1 # $2") for r in result.history]
    odd = replace(result, history=rows, title="A $5 deal $")
    for draw in (attribution_png, attention_png):
        assert draw(odd).startswith(PNG)
