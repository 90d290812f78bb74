"""ONNX export of a BERT4Rec run, and a recommender that scores with the export.

The exported graph maps left-padded tokens (B, T) int64, the last ``max_len - 1`` history items
then ``[MASK]`` (see :func:`bert4rec.model.inference_tokens`), to item scores (B, num_items):
column j is item j + 1. The batch size is dynamic; T is fixed at ``max_len``, which is exact
because padding never changes a score. The file carries ``num_items``, ``max_len``,
``mask_id``, the training data's fingerprint and a digest of the weights as metadata, so that a
service refuses an export of another run than the one it serves.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bert4rec.errors import RunError
from bert4rec.model import BERT4Rec, inference_tokens
from bert4rec.runs import RunInfo, atomic_write

OPSET = 17
EXPORT_FORMAT = "bert4rec-onnx-1"


class _ScoreGraph(nn.Module):
    """What the export traces: tokens (B, T) -> scores (B, num_items) at the last slot."""

    def __init__(self, model: BERT4Rec) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.model.encode(tokens, last_only=True)[:, -1]  # (B, d): the [MASK] slot
        return self.model.logits(hidden)  # (B, num_items)


def weights_digest(model: BERT4Rec) -> str:
    """SHA-256 of the model's weights (names and bytes), which tells one run's from another's."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.tensors().items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def export_onnx(model: BERT4Rec, path: str | Path, run: str | Path | None = None,
                info: RunInfo | None = None) -> Path:
    """Write ``model`` (of the run ``info``, when given) as ONNX to ``path`` (dynamic batch,
    T = max_len)."""
    import onnx

    path = Path(path)
    config = model.config
    model = model.eval()
    example = inference_tokens([np.arange(1, min(config.num_items, 5) + 1)] * 2,
                               config.max_len, config.mask_id, width=config.max_len)
    meta = {"format": EXPORT_FORMAT, "num_items": config.num_items, "max_len": config.max_len,
            "mask_id": config.mask_id, "run": str(run or ""), "weights": weights_digest(model),
            "data": str((info.data.get("fingerprint") if info is not None else None) or "")}

    def write(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript-based exporter: it needs no onnxscript and handles this graph;
            # torch < 2.15 (the range this package accepts) keeps it, with a deprecation warning.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                _ScoreGraph(model), (example,), tmp, dynamo=False,
                input_names=["tokens"], output_names=["scores"], opset_version=OPSET,
                dynamic_axes={"tokens": {0: "batch"}, "scores": {0: "batch"}},
            )
        proto = onnx.load(tmp)
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, str(value)
        onnx.save(proto, tmp)

    # A file a service may be reading is replaced whole, metadata included, or not at all.
    atomic_write(path, write)
    return path


class OnnxRecommender:
    """The recommender contract over an ONNX export, run with onnxruntime on the CPU."""

    name = "bert4rec-onnx"

    def __init__(self, path: str | Path, info: RunInfo | None = None,
                 threads: int | None = None, model: BERT4Rec | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise RunError(f"{path} does not exist; write it with 'bert4rec export'")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise RunError(f"{path} is not a readable ONNX model ({exc})") from exc
        meta: dict[str, Any] = self.session.get_modelmeta().custom_metadata_map
        if meta.get("format") != EXPORT_FORMAT:
            raise RunError(f"{path} is not a bert4rec export (format {meta.get('format')!r}); "
                           "write it with 'bert4rec export'")
        self._num_items = int(meta["num_items"])
        self.max_len = int(meta["max_len"])
        self.mask_id = int(meta["mask_id"])
        if info is not None and info.vocab.num_items != self._num_items:
            raise RunError(f"{path} scores {self._num_items} items but {info.path} has "
                           f"{info.vocab.num_items}; export that run again")
        # Exports written before these keys existed carry only num_items.
        if info is not None and (
                ("max_len" in info.config and int(info.config["max_len"]) != self.max_len)
                or (meta.get("data") and meta["data"] != info.data.get("fingerprint"))):
            raise RunError(f"{path} is an export of another run than {info.path} (other data "
                           "or model settings); export that run again")
        if model is not None and meta.get("weights") and meta["weights"] != weights_digest(model):
            raise RunError(f"{path} holds other weights than {info.path if info else 'the model'}"
                           "; export that run again")

    @property
    def num_items(self) -> int:
        return self._num_items

    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        if not len(histories):
            return torch.empty((0, self._num_items + 1))
        tokens = inference_tokens(histories, self.max_len, self.mask_id, width=self.max_len)
        (scores,) = self.session.run(["scores"], {"tokens": tokens.numpy()})  # (B, n)
        pad = np.full((len(histories), 1), -math.inf, dtype=np.float32)
        return torch.from_numpy(np.concatenate([pad, scores.astype(np.float32)], axis=1))
