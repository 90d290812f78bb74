"""Request and response bodies of the HTTP service, with the limits that guard it."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_K = 1000
MAX_HISTORY = 10_000
MAX_CANDIDATES = 100_000
MAX_EVENTS = 1000
# User ids travel in URL paths and item ids in exported ``user item`` lines: printable ASCII
# without spaces (classes spelled out, so Python and JSON Schema regexes agree on them).
USER_PATTERN = r"^[A-Za-z0-9_.:@~+-]{1,128}$"
ITEM_PATTERN = r"^[!-~]{1,128}$"

ItemText = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=ITEM_PATTERN)]
# Integers a JSON client represents exactly (2**53), whatever its language.
ItemInt = Annotated[int, Field(ge=-(2**53), le=2**53)]
# An item id as the data has it: an integer or a token without spaces. "42" and 42 are one item.
ItemId = ItemInt | ItemText


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
    item: int | str
    score: float
    title: str | None = None


class Recommendations(BaseModel):
    items: list[ScoredItem]
    skipped: list[Any] = Field(description="Items of the history the model does not know.")
    skipped_candidates: list[Any] = Field(default_factory=list)
    history_used: int = Field(description="Known items of the history the model read.")
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
