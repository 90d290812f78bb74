"""The served model and the micro-batcher that scores concurrent requests together.

A :class:`ServedModel` is a loaded run: the recommender (PyTorch, or an ONNX export), its
vocabulary, titles and popularity. Requests bring raw item ids; :meth:`ServedModel.prepare`
turns them into internal ids and reports the unknown ones.

The :class:`Batcher` queues prepared requests; one worker takes everything queued (up to
``max_batch``), scores it in one forward pass on its own thread, and hands each request its
top-k through the shared :func:`bert4rec.recommender.recommend`. While a batch is scored, the
event loop keeps reading requests, so HTTP work and model work use both cores, and the more
requests arrive, the larger (and cheaper per request) the batches get.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bert4rec.baselines.pop import PopularityRecommender
from bert4rec.recommender import Recommender, recommend
from bert4rec.runs import RunInfo, load_model

FALLBACK_POPULARITY = "popularity"


@dataclass(frozen=True)
class Prepared:
    """A request in internal ids: what the batcher scores."""

    history: np.ndarray  # (T,) internal ids, oldest first; unknown items left out
    skipped: list[Any]  # raw ids of the history the model does not know, in order
    k: int
    exclude_seen: bool = True
    candidates: np.ndarray | None = None  # internal ids, or None for the whole catalogue
    skipped_candidates: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class Recommendation:
    """Top-k in original ids, best first."""

    items: list[Any]
    scores: list[float]
    titles: list[str | None]
    skipped: list[Any]
    skipped_candidates: list[Any]
    history_used: int
    fallback: str | None  # "popularity" when the history held no known item


@dataclass(frozen=True)
class ServedModel:
    """A loaded run, ready to score; replaced whole on reload, never changed."""

    recommender: Recommender
    info: RunInfo
    backend: str  # "torch" or "onnx"
    source: Path  # the run directory, or the ONNX file
    loaded_at: float
    bf16: bool = False  # score under bfloat16 autocast (PyTorch only)
    model: Any = None  # the run's PyTorch model, for explanations (also beside an ONNX export)

    @property
    def popularity(self) -> PopularityRecommender | None:
        return PopularityRecommender.of_run(self.info)

    def describe(self) -> dict[str, Any]:
        return {"run": str(self.info.path), "model": self.info.model,
                "backend": f"{self.backend}-bf16" if self.bf16 else self.backend,
                "source": str(self.source), "items": self.info.vocab.num_items,
                "max_history": self.max_history, "loaded_at": self.loaded_at}

    @property
    def max_history(self) -> int | None:
        """How many of the latest items the model reads (None: all)."""
        max_len = self.info.config.get("max_len")
        return int(max_len) - 1 if max_len else None

    def prepare(self, history: Sequence[Any], k: int, exclude_seen: bool = True,
                candidates: Sequence[Any] | None = None) -> Prepared:
        """Raw ids to internal ids; unknown items are skipped and kept for the response."""
        ids, skipped = self.info.vocab.encode(list(history))
        allowed: np.ndarray | None = None
        skipped_candidates: list[Any] = []
        if candidates is not None:
            allowed, skipped_candidates = self.info.vocab.encode(list(candidates))
        return Prepared(ids, skipped, k, exclude_seen, allowed, skipped_candidates)

    def finish(self, request: Prepared, ids: np.ndarray, scores: np.ndarray,
               fallback: str | None) -> Recommendation:
        """Top-k row in internal ids (0 = no item) to original ids with titles."""
        valid = ids > 0
        items = self.info.vocab.decode(ids[valid])
        return Recommendation(
            items=items, scores=[float(s) for s in scores[valid]],
            titles=[self.info.titles.get(item) for item in items],
            skipped=request.skipped, skipped_candidates=request.skipped_candidates,
            history_used=len(request.history), fallback=fallback)


def load_served(run_dir: str | Path, onnx: str | Path | None = None,
                onnx_threads: int | None = None, bf16: bool = False) -> ServedModel:
    """Load a run directory (model, vocabulary, titles, popularity); with ``onnx``, score with
    that export of the run's model through onnxruntime instead of PyTorch. ``bf16`` scores a
    PyTorch model under bfloat16 autocast: faster for batches on CPUs with AMX or AVX-512
    BF16, and near-ties may swap places."""
    model, info = load_model(run_dir)
    if isinstance(model, torch.nn.Module):
        model.eval()
    if onnx is None:
        return ServedModel(model, info, "torch", Path(run_dir), time.time(), bf16=bf16,
                           model=model)
    from bert4rec.export import OnnxRecommender
    from bert4rec.model import BERT4Rec

    exported = OnnxRecommender(onnx, info, threads=onnx_threads,
                               model=model if isinstance(model, BERT4Rec) else None)
    return ServedModel(exported, info, "onnx", Path(onnx), time.time(), model=model)


class _Scored:
    """A recommender that hands back scores computed before, so that the requests of a batch
    get their k, seen-item masking and candidates from :func:`recommend` itself."""

    def __init__(self, num_items: int, scores: torch.Tensor) -> None:
        self._num_items = num_items
        self._scores = scores  # (B, num_items + 1), row i for the i-th history asked about

    @property
    def num_items(self) -> int:
        return self._num_items

    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        assert len(histories) == len(self._scores)
        return self._scores


def score_batch(served: ServedModel, requests: Sequence[Prepared]) -> list[Recommendation]:
    """Score ``requests`` together: one forward pass for those with a known item, popularity
    for the others (when the run has it). Requests without candidates that agree on
    ``exclude_seen`` share one top-k (at their largest k); each with candidates gets its own."""
    popular = served.popularity
    modelled = [i for i, r in enumerate(requests) if len(r.history) or popular is None]
    results: dict[int, Recommendation] = {}
    with torch.inference_mode():
        if modelled:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=served.bf16):
                scores = served.recommender.score([requests[i].history for i in modelled])
            scored = dict(zip(modelled, scores, strict=True))  # request -> (num_items + 1,)
            for group in _groups(requests, modelled):
                model = _Scored(served.info.vocab.num_items,
                                torch.stack([scored[i] for i in group]))
                results.update(_top_k(served, requests, group, model, None))
        fallback = [i for i in range(len(requests)) if i not in results]
        if fallback:
            assert popular is not None
            for group in _groups(requests, fallback):
                results.update(_top_k(served, requests, group, popular, FALLBACK_POPULARITY))
    return [results[i] for i in range(len(requests))]


def _groups(requests: Sequence[Prepared], indices: list[int]) -> list[list[int]]:
    """Requests that can share one top-k: no candidates and the same exclude_seen."""
    shared: dict[bool, list[int]] = {}
    alone = []
    for i in indices:
        if requests[i].candidates is None:
            shared.setdefault(requests[i].exclude_seen, []).append(i)
        else:
            alone.append([i])
    return [*shared.values(), *alone]


def _top_k(served: ServedModel, requests: Sequence[Prepared], group: list[int],
           model: Recommender, fallback: str | None) -> dict[int, Recommendation]:
    first = requests[group[0]]
    k = max(requests[i].k for i in group)
    ids, scores = recommend(model, [requests[i].history for i in group], k=k,
                            exclude_seen=first.exclude_seen, candidates=first.candidates,
                            batch_size=len(group))
    return {i: served.finish(requests[i], ids[row, : requests[i].k],
                             scores[row, : requests[i].k], fallback)
            for row, i in enumerate(group)}


@dataclass
class _Pending:
    served: ServedModel
    request: Prepared
    future: asyncio.Future[Recommendation]


class Batcher:
    """Gathers concurrent requests and scores them in batches on one worker thread.

    ``max_batch`` bounds a batch; ``max_wait`` (seconds) is how long the worker waits for more
    requests after the first one when fewer than ``max_batch`` are queued (0: take what is
    queued and go; requests that arrive while a batch is scored form the next one).
    """

    def __init__(self, max_batch: int = 64, max_wait: float = 0.0) -> None:
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bert4rec-score")
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0
        self.requests = 0

    def start(self) -> None:
        """Start the worker on the running event loop (again, if it changed: test clients
        that skip the app's start-up run each request on a loop of its own)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None:
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._run(self._queue))
            self._loop = loop

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        self._executor.shutdown(wait=True)

    async def submit(self, served: ServedModel, request: Prepared) -> Recommendation:
        """The recommendation for ``request``, scored in the next batch."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self.start()
        future: asyncio.Future[Recommendation] = loop.create_future()
        await self._queue.put(_Pending(served, request, future))
        return await future

    async def _run(self, queue: asyncio.Queue[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            batch = [p for p in batch if not p.future.cancelled()]  # clients that gave up
            # A reload may land between requests: each model scores its own requests.
            for served in {id(p.served): p.served for p in batch}.values():
                group = [p for p in batch if p.served is served]
                try:
                    results = await loop.run_in_executor(
                        self._executor, score_batch, served, [p.request for p in group])
                except Exception as exc:  # a bug; fail these requests, keep serving
                    for p in group:
                        if not p.future.done():
                            p.future.set_exception(exc)
                    continue
                for p, result in zip(group, results, strict=True):
                    if not p.future.done():
                        p.future.set_result(result)
            self.batches += 1
            self.requests += len(batch)
