"""The paper's baselines, each in its own file, all implementing the recommender contract."""

from bert4rec.baselines.pop import PopularityRecommender

__all__ = ["PopularityRecommender"]
