"""Request and response bodies of the HTTP service, with the limits that guard it."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
)

MAX_K = 1000
MAX_HISTORY = 10_000
MAX_CANDIDATES = 100_000
MAX_EVENTS = 1000
# User ids travel in URL paths and item ids in exported ``user item`` lines: printable ASCII
# without spaces (classes spelled out, so Python and JSON Schema regexes agree on them).
USER_PATTERN = r"^[A-Za-z0-9_.:@~+-]{1,128}$"
ITEM_PATTERN = r"^[!-~]{1,128}$"

ItemText = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=ITEM_PATTERN)]


def _not_a_bool(value: Any) -> Any:
    # JSON true is not item 1: a malformed item would be stored as a real one. (1.0 is: JSON
    # Schema counts it as an integer.)
    if isinstance(value, bool):
        raise ValueError("an item id is an integer or a token, not true or false")
    return value


# Integers a JSON client represents exactly (2**53), whatever its language. The bounds come
# before the validator: after it, the published JSON schema would lose them.
ItemInt = Annotated[int, Field(ge=-(2**53), le=2**53), BeforeValidator(_not_a_bool)]
# An item id as the data has it: an integer or a token without spaces. "42" and 42 are one item.
ItemId = ItemInt | ItemText


def _exact_in_json(item: int | str) -> int | str:
    # An integer id a JSON client cannot hold exactly goes out as text, which requests take back.
    return str(item) if isinstance(item, int) and abs(item) > 2**53 else item


# An item id in a response: as the data has it, but as text beyond 2**53.
ItemOut = Annotated[int | str, PlainSerializer(_exact_in_json, return_type=int | str)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(_Strict):
    history: list[ItemId] = Field(
        max_length=MAX_HISTORY,
        description="Item ids, oldest first. Unknown ids are skipped and listed in `skipped`; "
        "an empty history (or one without a known item) gets the most popular items.")
    k: int = Field(10, ge=1, le=MAX_K, description="How many items to return.")
    exclude_seen: bool = Field(True, description="Leave out items of the history.")
    candidates: list[ItemId] | None = Field(
        None, max_length=MAX_CANDIDATES,
        description="Rank only these items (unknown ones are listed in `skipped_candidates`).")


class ScoredItem(BaseModel):
    item: ItemOut
    score: float
    title: str | None = None


class Recommendations(BaseModel):
    items: list[ScoredItem]
    skipped: list[Any] = Field(description="Items of the history the model does not know.")
    skipped_candidates: list[Any] = Field(default_factory=list)
    history_used: int = Field(
        description="Known items of the history given to the model; BERT4Rec reads the most "
                    "recent max_len - 1 of them.")
    fallback: str | None = Field(
        None, description="`popularity` when the history held no known item.")
    user: str | None = None


class EventsRequest(_Strict):
    items: list[ItemId] = Field(
        min_length=1, max_length=MAX_EVENTS,
        description="Items the user interacted with, oldest first. Kept even when the model "
        "does not know them, so a model trained later on the store learns them.")


class EventsResponse(BaseModel):
    user: str
    appended: int
    events: int = Field(description="The user's events in the store after this append.")


class UserEvents(BaseModel):
    user: str
    items: list[str]


class DeleteResponse(BaseModel):
    user: str
    deleted: int


class ReloadRequest(_Strict):
    run: str = Field(min_length=1, max_length=4096, description="Run directory to serve.")
    onnx: str | None = Field(None, min_length=1, max_length=4096,
                             description="Score with this ONNX export of the run.")


class ModelInfo(BaseModel):
    run: str
    model: str
    backend: str
    source: str
    items: int
    max_history: int | None
    loaded_at: float


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    model: ModelInfo | None = None
    store: str | None = None
    problem: str | None = None


class Problem(BaseModel):
    detail: str


MAX_EXPLAIN_STEPS = 20
MAX_EXPLAIN_K = 100


class ExplainRequest(_Strict):
    history: list[ItemId] = Field(
        min_length=1, max_length=MAX_HISTORY,
        description="Item ids, oldest first. Unknown ids are skipped and listed in `skipped`; "
        "the model reads the latest ones (see `/model`'s `max_history`).")
    item: ItemId | None = Field(
        None, description="The recommended item to explain (default: the top-1 "
        "recommendation). It must be known to the model and not in the history.")
    k: int = Field(10, ge=1, le=MAX_EXPLAIN_K,
                   description="The top-k that `leaves_top_k` and the counterfactual set "
                   "refer to.")
    max_steps: int = Field(10, ge=1, le=MAX_EXPLAIN_STEPS,
                           description="Most items the greedy counterfactual set removes.")
    plots: bool = Field(False, description="Also return the attribution bars and the "
                        "attention heat map as PNG data URLs (slower: about 0.5 s more).")


class HistoryEvidence(BaseModel):
    position: int = Field(description="0 = the oldest history item the model reads.")
    item: ItemOut
    title: str | None = None
    score_drop: float = Field(description="Counterfactual: the item's score with the history "
                              "minus its score without this history item.")
    rank_without: int = Field(description="Counterfactual: the item's rank without it.")
    leaves_top_k: bool = Field(description="Removing this history item alone drops the "
                               "recommended item out of the top-k.")
    gradient_x_input: float
    attention_rollout: float = Field(description="Attention (weaker evidence).")
    attention_last_layer: float = Field(description="Attention (weaker evidence).")


class CounterfactualSetOut(BaseModel):
    method: str
    found: bool = Field(description="Removing `items` together drops the recommended item out "
                        "of the top-k (false: `max_steps` removals did not).")
    positions: list[int]
    items: list[ItemOut]
    titles: list[str | None]
    ranks: list[int] = Field(description="The item's rank after each removal step.")
    note: str


class AttentionOut(BaseModel):
    weights: list[list[list[float]]] = Field(
        description="(layers, heads, history positions): attention from the [MASK] slot.")
    mask_self: list[list[float]] = Field(description="(layers, heads): [MASK] on itself.")
    rollout: list[float]
    note: str


class ExplanationOut(BaseModel):
    item: ItemOut
    title: str | None = None
    score: float
    rank: int = Field(description="Among the items not in the history; 1 is best.")
    k: int
    history: list[HistoryEvidence]
    counterfactual_set: CounterfactualSetOut
    attention: AttentionOut
    skipped: list[Any] = Field(description="Items of the history the model does not know.")
    truncated: int = Field(description="Older items beyond what the model reads, left out.")
    notes: dict[str, str]
    plots: dict[str, str] | None = Field(
        None, description="`attribution` and `attention`: PNG images as data URLs.")


class UserList(BaseModel):
    users: list[str]
    total: int = Field(description="Users with events in the store.")
