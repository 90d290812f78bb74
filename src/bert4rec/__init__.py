"""BERT4Rec sequential recommendation: the paper's model, honest evaluation, CLI and service."""

__version__ = "0.1.0"

from bert4rec.api import fit, save, train
from bert4rec.data import Interactions, ItemVocab, PrepareOptions, load_interactions
from bert4rec.evaluation import EvaluationResult, compare, evaluate
from bert4rec.recommender import Recommender, recommend
from bert4rec.runs import load_model

__all__ = [
    "EvaluationResult",
    "Interactions",
    "ItemVocab",
    "PrepareOptions",
    "Recommender",
    "__version__",
    "compare",
    "evaluate",
    "fit",
    "load_interactions",
    "load_model",
    "recommend",
    "save",
    "train",
]
