"""PNG plots of an :class:`~bert4rec.explain.Explanation`, drawn with matplotlib's Agg (no display).

* :func:`plot_attribution`: per history item, the counterfactual score drop beside the
  attention rollout, in two labelled panels (different kinds of evidence, different units).
* :func:`plot_attention`: attention from the [MASK] slot, one row per (layer, head), one column
  per history item.

Each writes a PNG file; :func:`attribution_png` and :func:`attention_png` return the same
images as bytes (for the HTTP service).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bert4rec.explain import Explanation
from bert4rec.runs import atomic_write

# More history items than this are shown as the most recent ones only, so labels stay legible.
MAX_SHOWN = 40


def _label(item: Any, title: str | None, width: int = 28) -> str:
    text = f"{item} {title}" if title else str(item)
    return text if len(text) <= width else text[: width - 1] + "…"


def _shown(explanation: Explanation) -> tuple[list[Any], str]:
    rows = explanation.history[-MAX_SHOWN:]
    left = len(explanation.history) - len(rows)
    note = f" (last {len(rows)} of {len(explanation.history)} items)" if left else ""
    return rows, note


def _target(explanation: Explanation) -> str:
    return _label(explanation.item, explanation.title, 60)


def plot_attribution(explanation: Explanation, path: str | Path) -> Path:
    """Bars per history item (oldest at the top): counterfactual score drop (items whose
    removal alone drops the recommendation out of the top-k in red) beside attention
    rollout. Writes ``path`` (PNG) and returns it."""
    with _plain_text():
        return _save(_attribution_figure(explanation), path)


def attribution_png(explanation: Explanation) -> bytes:
    """:func:`plot_attribution`'s image as PNG bytes."""
    with _plain_text():
        return _png(_attribution_figure(explanation))


def plot_attention(explanation: Explanation, path: str | Path) -> Path:
    """Heat map of the attention weights from [MASK]: rows (layer, head), columns history
    items oldest first. Writes ``path`` (PNG) and returns it."""
    with _plain_text():
        return _save(_attention_figure(explanation), path)


def attention_png(explanation: Explanation) -> bytes:
    """:func:`plot_attention`'s image as PNG bytes."""
    with _plain_text():
        return _png(_attention_figure(explanation))


def _attribution_figure(explanation: Explanation) -> Figure:
    rows, note = _shown(explanation)
    labels = [f"[{r.position}] {_label(r.item, r.title)}" for r in rows]
    y = np.arange(len(rows))
    height = max(3.0, 0.28 * len(rows) + 1.5)
    fig = _figure(11, height)
    left, right = fig.subplots(1, 2, sharey=True)
    drops = [r.score_drop for r in rows]
    colours = ["tab:red" if r.leaves_top_k else "tab:blue" for r in rows]
    left.barh(y, drops, color=colours)
    left.axvline(0, color="black", linewidth=0.8)
    left.set_title("counterfactual: score drop without the item\n"
                   f"(red: removal alone leaves the top-{explanation.k})", fontsize=9)
    left.set_xlabel("score drop (logit)")
    left.set_yticks(y, labels, fontsize=7)
    left.invert_yaxis()
    right.barh(y, [r.attention_rollout for r in rows], color="tab:gray")
    right.set_title("attention rollout from [MASK]\n(where the model looked; weaker evidence)",
                    fontsize=9)
    right.set_xlabel("rollout weight")
    fig.suptitle(f"Why {_target(explanation)} (rank {explanation.rank}){note}", fontsize=10)
    fig.tight_layout()
    return fig


def _attention_figure(explanation: Explanation) -> Figure:
    rows, note = _shown(explanation)
    weights = np.asarray(explanation.attention.weights)  # (L, heads, n)
    layers, heads, n = weights.shape
    grid = weights[:, :, n - len(rows) :].reshape(layers * heads, len(rows))
    width = max(5.0, 0.25 * len(rows) + 3)
    fig = _figure(width, 2.8 + 0.45 * layers * heads)
    ax = fig.add_subplot()
    image = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_yticks(np.arange(layers * heads),
                  [f"layer {a + 1} head {b + 1}" for a in range(layers) for b in range(heads)],
                  fontsize=7)
    ax.set_xticks(np.arange(len(rows)), [_label(r.item, r.title, 18) for r in rows],
                  rotation=90, fontsize=6)
    fig.colorbar(image, ax=ax, label="attention weight from [MASK]")
    ax.set_title(f"Attention from [MASK] for {_target(explanation)}{note}\n"
                 "(where the model looked, not what changed its answer)", fontsize=9)
    fig.tight_layout()
    return fig


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)  # Agg: no display needed
    return fig


def _plain_text() -> Any:
    """Labels are item ids and titles: '$' in them is a dollar sign, never math text."""
    return rc_context({"text.parse_math": False})


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)

    def write_png(tmp: str) -> None:
        fig.savefig(tmp, format="png")

    atomic_write(path, write_png)
    return path
