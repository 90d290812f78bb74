"""POP: every user gets the items with the most training interactions (paper section 4.2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bert4rec.split import TrainSequences

if TYPE_CHECKING:
    from bert4rec.runs import RunInfo


class PopularityRecommender:
    """Scores each item by its interaction count in the training sequences only, so neither
    validation nor test targets ever inflate an item's score."""

    name = "pop"

    def __init__(self, counts: torch.Tensor) -> None:
        self.counts = counts.float()  # (num_items + 1,), index = internal item id

    @classmethod
    def of_run(cls, info: RunInfo) -> PopularityRecommender | None:
        """The fallback of a run directory, from its training counts (None where it has none):
        what a history with no item the run knows gets."""
        return None if info.popularity is None else cls(torch.from_numpy(info.popularity))

    @classmethod
    def fit(cls, train: TrainSequences, num_items: int) -> PopularityRecommender:
        counts = np.bincount(train.items, minlength=num_items + 1)
        return cls(torch.from_numpy(counts.astype(np.float32)))

    @property
    def num_items(self) -> int:
        return len(self.counts) - 1

    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        return self.counts.unsqueeze(0).expand(len(histories), -1)

    # Run-directory round trip: the config is empty, the counts are the weights.
    def config(self) -> dict[str, Any]:
        return {}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"counts": self.counts}

    @classmethod
    def from_tensors(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> PopularityRecommender:
        return cls(tensors["counts"])
