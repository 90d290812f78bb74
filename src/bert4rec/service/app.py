"""The HTTP service: ``create_app(run_dir, db)`` returns a FastAPI app.

Stateless: ``POST /recommend`` with a history of original item ids. Stateful: events appended
to a user's stored history (``POST /users/{user}/events``) and recommendations from it
(``GET /users/{user}/recommendations``); ``DELETE /users/{user}`` forgets the user.
``POST /explain`` says why an item is recommended (see :mod:`bert4rec.explain`), and a web
page at ``/ui/`` (``/`` leads there) shows recommendations and their explanations. The model
is loaded once, here, and replaced whole by ``POST /admin/reload`` or SIGHUP while requests
keep being served. The OpenAPI schema is at ``/openapi.json``, the docs at ``/docs``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import re
import signal
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from bert4rec.errors import Bert4RecError, DataError
from bert4rec.service.engine import Batcher, Recommendation, ServedModel, load_served
from bert4rec.service.schemas import (
    MAX_K,
    USER_PATTERN,
    DeleteResponse,
    EventsRequest,
    EventsResponse,
    ExplainRequest,
    ExplanationOut,
    Health,
    ModelInfo,
    Problem,
    Ready,
    Recommendations,
    RecommendRequest,
    ReloadRequest,
    ScoredItem,
    UserEvents,
    UserList,
)
from bert4rec.service.store import EventStore, open_store, redact

log = logging.getLogger("bert4rec.service")
T = TypeVar("T")

User = Annotated[str, PathParam(pattern=USER_PATTERN, description="A user id (no spaces).")]
STORE_DOWN: dict[int | str, dict[str, Any]] = {
    503: {"model": Problem, "description": "The event store cannot be reached."}}
BAD_BODY: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body cannot be parsed: send JSON."}}
CANNOT_EXPLAIN: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body cannot be parsed, or the served run "
          "cannot explain (its model is not BERT4Rec); `detail` says which."},
    404: {"model": Problem, "description": "No item of the history is known to the model "
          "(nothing to remove, so nothing to explain), or `item` is not; `detail` lists "
          "them."},
    409: {"model": Problem, "description": "`item` is in the history (or, without `item`, "
          "every item is): explanations are for items the model would recommend, which "
          "exclude the history."}}
WEB = Path(__file__).parent / "web"
# Larger than any valid body (10,000 history ids and as many candidates, of 128 characters):
# a bigger one is refused before it is read.
MAX_BODY = 8 << 20
STORE_THREADS = 8  # threads, each with its own store connection, kept for the app's life


@dataclass
class ServiceState:
    """What the routes share. ``served`` is replaced whole on reload, never changed."""

    served: ServedModel
    store: EventStore
    batcher: Batcher
    onnx_threads: int | None = None
    bf16: bool = False


def create_app(
    run: str | Path,
    db: str | Path = "events.sqlite3",
    onnx: str | Path | None = None,
    max_batch: int = 64,
    max_wait: float = 0.0,
    onnx_threads: int | None = None,
    bf16: bool = False,
) -> FastAPI:
    """The service for the run in ``run`` (scored with the ONNX export ``onnx`` when given)
    and the event store at ``db`` (an SQLite path or a ``postgresql://`` URL). Loading fails
    here, with a :class:`bert4rec.errors.Bert4RecError`, not at the first request. See
    :class:`~bert4rec.service.engine.Batcher` for ``max_batch`` and ``max_wait`` (seconds),
    :func:`~bert4rec.service.engine.load_served` for ``onnx_threads`` and ``bf16``."""
    state = ServiceState(load_served(run, onnx, onnx_threads, bf16), open_store(db),
                         Batcher(max_batch, max_wait), onnx_threads, bf16)
    reload_lock = asyncio.Lock()
    # Store calls on threads that live as long as the app: each keeps its own connection, so
    # the connections are as many as the threads, never one more per thread recycled.
    store_pool = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="bert4rec-store")
    # One explanation at a time: each is several forward passes over a whole history, so a
    # burst of them queues instead of crowding out the recommendation batches.
    explaining = asyncio.Semaphore(1)

    async def reload(run: str | Path | None, onnx: str | Path | None) -> ServedModel:
        """Load ``run`` (None: the served run again, read when its turn comes)."""
        async with reload_lock:
            if run is None:
                current = state.served
                run = current.info.path
                onnx = current.source if current.backend == "onnx" else None
            served = await run_in_threadpool(load_served, run, onnx, state.onnx_threads,
                                             state.bf16)
            state.served = served  # requests queued before keep their model
            log.info("serving %s (%s)", served.source, served.backend)
            return served

    def on_sighup() -> None:
        # The run served when the reload's turn comes: an /admin/reload before it stays.
        task = asyncio.ensure_future(reload(None, None))
        task.add_done_callback(_log_failure)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.batcher.start()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, on_sighup)  # main thread only
        try:
            yield
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)
            await state.batcher.stop()
            store_pool.shutdown(wait=True)
            state.store.close()

    app = FastAPI(title="bert4rec", version="1", lifespan=lifespan,
                  description="BERT4Rec recommendations for item histories and stored users.")
    app.state.service = state

    @app.middleware("http")
    async def refuse_huge_bodies(request: Request, call_next: Any) -> Any:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY:
            return JSONResponse({"detail": f"the body has {int(declared)} bytes; at most "
                                 f"{MAX_BODY} are read"}, status_code=413)
        return await call_next(request)

    @app.exception_handler(StarletteHTTPException)
    async def http_problem(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """The error as FastAPI gives it, its detail made safe to send (see :func:`_brief`)."""
        return JSONResponse({"detail": _brief(exc.detail, text=2000)},
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """422 saying what is wrong, or 400 for a body that is not JSON (as documented). A
        value JSON cannot carry (NaN, Infinity) is quoted as text, not a failed answer."""
        errors = exc.errors()
        broken = next((e for e in errors if e.get("type") == "json_invalid"), None)
        if broken is not None:
            reason = (broken.get("ctx") or {}).get("error", "")
            return JSONResponse({"detail": f"the body is not valid JSON ({reason}); send a "
                                 "JSON object"}, status_code=400)
        # What was sent is echoed briefly: a huge or deep body must not make a huge answer.
        shown = [{**jsonable_encoder({k: v for k, v in e.items() if k != "input"}),
                  "input": _brief(e.get("input"))} for e in errors]
        return JSONResponse({"detail": _brief(shown, depth=6, items=50)}, status_code=422)

    async def in_store_thread(fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(store_pool, fn, *args)

    async def store_call(fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking store call on a store thread; a database failure is a 503."""
        try:
            return await in_store_thread(fn, *args)
        except Bert4RecError as exc:
            raise HTTPException(503, f"event store unavailable: {exc}") from exc
        except Exception as exc:
            if _is_database_error(exc):
                raise HTTPException(503, f"event store unavailable: {exc}") from exc
            raise

    async def recommend(history: list[Any], k: int, exclude_seen: bool,
                        candidates: list[Any] | None, user: str | None = None
                        ) -> Recommendations:
        served = state.served
        prepared = served.prepare(history, k, exclude_seen, candidates)
        result = await state.batcher.submit(served, prepared)
        return _response(result, user)

    @app.get("/health", response_model=Health, tags=["operations"])
    async def health() -> Health:
        """The process is up."""
        return Health(status="ok")

    @app.get("/ready", response_model=Ready, tags=["operations"],
             responses={503: {"model": Ready, "description": "Not ready."}})
    async def ready() -> Any:
        """A model is loaded and the event store answers."""
        served = state.served
        try:
            await in_store_thread(state.store.ping)
        except Exception as exc:
            return JSONResponse(Ready(status="unavailable", problem=f"event store: {exc}")
                                .model_dump(), status_code=503)
        return Ready(status="ready", model=ModelInfo(**served.describe()),
                     store=redact(state.store.url))

    @app.get("/model", response_model=ModelInfo, tags=["operations"])
    async def model_info() -> ModelInfo:
        """The run being served."""
        return ModelInfo(**state.served.describe())

    @app.post("/recommend", response_model=Recommendations, tags=["recommend"],
              responses=BAD_BODY)
    async def recommend_history(body: RecommendRequest) -> Recommendations:
        """Top-k items to follow a history of original item ids."""
        return await recommend(body.history, body.k, body.exclude_seen, body.candidates)

    @app.post("/users/{user}/events", response_model=EventsResponse, tags=["users"],
              responses={**STORE_DOWN, **BAD_BODY})
    async def append_events(user: User, body: EventsRequest) -> EventsResponse:
        """Append items to a user's history; answered once they are on disk."""
        items = [str(item) for item in body.items]
        total = await store_call(state.store.append, user, items)
        return EventsResponse(user=user, appended=len(items), events=total)

    @app.get("/users/{user}/events", response_model=UserEvents, tags=["users"],
             responses=STORE_DOWN)
    async def user_events(user: User) -> UserEvents:
        """A user's stored items, oldest first (empty for an unknown user)."""
        return UserEvents(user=user, items=await store_call(state.store.history, user))

    @app.get("/users/{user}/recommendations", response_model=Recommendations, tags=["users"],
             responses=STORE_DOWN)
    async def user_recommendations(
        user: User,
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
        exclude_seen: bool = True,
    ) -> Recommendations:
        """Top-k items from a user's stored history; a user without events gets the most
        popular items (``fallback``)."""
        history = await store_call(state.store.history, user)
        return await recommend(history, k, exclude_seen, None, user)

    @app.get("/users", response_model=UserList, tags=["users"], responses=STORE_DOWN)
    async def list_users(limit: Annotated[int, Query(ge=0, le=MAX_K)] = 100) -> UserList:
        """Ids of users with stored events, in natural order (``7`` before ``10``), at most
        ``limit`` of them, and how many there are."""
        users = await store_call(state.store.users)
        return UserList(users=sorted(users, key=_natural)[:limit], total=len(users))

    @app.delete("/users/{user}", response_model=DeleteResponse, tags=["users"],
                responses=STORE_DOWN)
    async def delete_user(user: User) -> DeleteResponse:
        """Remove every stored event of a user."""
        return DeleteResponse(user=user, deleted=await store_call(state.store.delete, user))

    @app.post("/explain", response_model=ExplanationOut, tags=["explain"],
              responses=CANNOT_EXPLAIN)
    async def explain_item(body: ExplainRequest) -> ExplanationOut:
        """Why the model recommends ``item`` (default: its top-1) after ``history``: the exact
        effect of removing each history item (one batched forward pass), a greedy
        counterfactual set, gradient x input, and attention from the [MASK] slot (weaker
        evidence, labelled so); with ``plots``, PNG images of them."""
        served = state.served
        async with explaining:
            try:
                return await run_in_threadpool(_explanation, served, body)
            except DataError as exc:
                raise HTTPException(400, str(exc)) from exc

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/ui/")

    app.mount("/ui", StaticFiles(directory=WEB, html=True), name="ui")

    @app.post("/admin/reload", response_model=ModelInfo, tags=["operations"],
              responses={400: {"model": Problem, "description": "The body cannot be parsed, "
                               "or the run cannot be loaded."},
                         404: {"model": Problem, "description": "No such run or file."}})
    async def admin_reload(body: ReloadRequest) -> ModelInfo:
        """Load another run directory (or ONNX export) and swap it in; requests in flight
        finish on the old model, none is refused."""
        for given in (body.run, body.onnx):
            if given is not None and not _exists(given):
                raise HTTPException(404, f"{given} does not exist (on the server)")
        try:
            served = await reload(body.run, body.onnx)
        except Bert4RecError as exc:
            raise HTTPException(400, f"cannot load {body.run}: {exc}") from exc
        except (OSError, ValueError, KeyError) as exc:
            raise HTTPException(400, f"cannot load {body.run}: {exc!r}") from exc
        return ModelInfo(**served.describe())

    return app


def _response(result: Recommendation, user: str | None) -> Recommendations:
    items = [ScoredItem(item=item, score=score, title=title)
             for item, score, title in zip(result.items, result.scores, result.titles,
                                           strict=True)]
    return Recommendations(items=items, skipped=result.skipped,
                           skipped_candidates=result.skipped_candidates,
                           history_used=result.history_used, fallback=result.fallback,
                           user=user)


def _brief(value: Any, depth: int = 2, items: int = 20, text: int = 200) -> Any:
    """``value`` as an error may echo it: JSON-safe (NaN and infinities as text, a lone UTF-16
    surrogate escaped) and short (``depth`` levels, ``items`` entries a level, ``text``
    characters a string), whatever was sent."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        cut = value if len(value) <= text else value[:text] + "..."
        return cut.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict | list | tuple):
        if depth == 0:
            return f"<{len(value)} values>"
        pairs = list(value.items())[:items] if isinstance(value, dict) else None
        if pairs is not None:
            out: Any = {_brief(str(k), 0, items, text): _brief(v, depth - 1, items, text)
                        for k, v in pairs}
        else:
            out = [_brief(v, depth - 1, items, text) for v in list(value)[:items]]
        if len(value) > items:
            more = f"... {len(value) - items} more"
            out = {**out, "...": more} if isinstance(out, dict) else [*out, more]
        return out
    return value


def _exists(path: str) -> bool:
    """Whether ``path`` exists; a name the system refuses (too long, a NUL) does not."""
    try:
        return Path(path).exists()
    except (OSError, ValueError):
        return False


def _explanation(served: ServedModel, body: ExplainRequest) -> ExplanationOut:
    from bert4rec.explain import explain

    vocab = served.info.vocab
    known, unknown = vocab.encode(list(body.history))
    if not len(known):
        listed = " ".join(map(str, unknown[:20])) + (" ..." if len(unknown) > 20 else "")
        raise HTTPException(404, "no item of the history is known to the model (unknown: "
                            f"{listed}); the recommendations for it come from popularity "
                            "alone, so there is nothing to explain")
    if body.item is not None:
        found, _ = vocab.encode([body.item])
        if not len(found):
            raise HTTPException(404, f"item {body.item!r} is not known to the model; pick an "
                                "item of the run's vocabulary")
        if int(found[0]) in set(known.tolist()):
            raise HTTPException(409, f"item {body.item!r} is in the history; explanations "
                                "are for items the model would recommend, which exclude "
                                "the history")
    elif len(set(known.tolist())) >= vocab.num_items:
        raise HTTPException(409, "every item the model knows is in the history; nothing is "
                            "recommended, so there is nothing to explain")
    result = explain(served.model, served.info, body.history, item=body.item, k=body.k,
                     max_steps=body.max_steps, precision="bf16" if served.bf16 else "fp32")
    plots = None
    if body.plots:
        from bert4rec.explain_plots import attention_png, attribution_png

        plots = {name: "data:image/png;base64," + base64.b64encode(draw(result)).decode()
                 for name, draw in (("attribution", attribution_png),
                                    ("attention", attention_png))}
    return ExplanationOut(**result.to_dict(), plots=plots)


def _natural(text: str) -> tuple[Any, ...]:
    """Sort key: digit runs compare as numbers."""
    return tuple(int(part) if part.isdecimal() else part for part in re.split(r"(\d+)", text))


def _is_database_error(exc: Exception) -> bool:
    import sqlite3

    if isinstance(exc, sqlite3.Error):
        return True
    module = type(exc).__module__
    return module.startswith("psycopg")


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("reload failed: %s", task.exception())
