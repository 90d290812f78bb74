"""ONNX export: the same top-k as PyTorch, checked metadata, and serving from the export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyRun
from fastapi.testclient import TestClient

from bert4rec.cli import main
from bert4rec.errors import RunError
from bert4rec.export import OnnxRecommender, export_onnx
from bert4rec.model import BERT4Rec, BERT4RecConfig
from bert4rec.recommender import recommend
from bert4rec.runs import load_model
from bert4rec.service import create_app


@pytest.fixture(scope="module")
def onnx_file(tiny_run: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, _ = load_model(tiny_run.path)
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx")


def test_export_gives_the_same_top_k(tiny_run: TinyRun, onnx_file: Path) -> None:
    model, info = load_model(tiny_run.path)
    exported = OnnxRecommender(onnx_file, info)
    rng = np.random.default_rng(0)
    n = info.vocab.num_items
    # Empty, short, exactly max_len - 1 and longer than the model reads.
    histories = [rng.integers(1, n + 1, size=length) for length in
                 [0, 1, 3, 7, 7, 20, *rng.integers(0, 15, size=194)]]
    ours, theirs = model.score(histories), exported.score(histories)
    assert theirs.shape == (200, n + 1)
    torch.testing.assert_close(theirs[:, 1:], ours[:, 1:], rtol=1e-4, atol=1e-4)
    ids_torch, _ = recommend(model, histories, k=10)
    ids_onnx, _ = recommend(exported, histories, k=10)
    np.testing.assert_array_equal(ids_onnx, ids_torch)


def test_export_must_match_the_run(onnx_file: Path, other_run: TinyRun, tmp_path: Path) -> None:
    _, info = load_model(other_run.path)
    wrong = f"scores 30 items but .* has {other_run.data.num_items}; export that run again"
    with pytest.raises(RunError, match=wrong):
        OnnxRecommender(onnx_file, info)
    with pytest.raises(RunError, match="does not exist; write it with 'bert4rec export'"):
        OnnxRecommender(tmp_path / "none.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(RunError, match="is not a readable ONNX model"):
        OnnxRecommender(tmp_path / "bad.onnx")


def test_an_export_of_another_run_of_the_same_size_is_refused(
        tiny_run: TinyRun, onnx_file: Path, tmp_path: Path) -> None:
    model, info = load_model(tiny_run.path)
    OnnxRecommender(onnx_file, info, model=model)  # its own run
    torch.manual_seed(1)
    retrained = BERT4Rec(model.config).eval()  # same data and settings, other weights
    with pytest.raises(RunError, match="holds other weights than"):
        OnnxRecommender(onnx_file, info, model=retrained)
    longer = BERT4Rec(BERT4RecConfig(**{**model.config.to_dict(), "max_len": 16})).eval()
    other = export_onnx(longer, tmp_path / "longer.onnx")
    with pytest.raises(RunError, match="is an export of another run"):
        OnnxRecommender(other, info)
    assert OnnxRecommender(onnx_file, info).score([]).shape == (0, info.vocab.num_items + 1)


@pytest.mark.parametrize("where", ["folder", "run"])
def test_export_refuses_a_folder_or_a_place_inside_the_run(
        tiny_run: TinyRun, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        where: str) -> None:
    target = tmp_path if where == "folder" else tiny_run.path / "model.safetensors"
    assert main(["export", "--run", str(tiny_run.path), "--output", str(target)]) == 2
    assert "error:" in capsys.readouterr().err
    load_model(tiny_run.path)  # the run is whole


def test_service_runs_from_the_export(tiny_run: TinyRun, onnx_file: Path,
                                      tmp_path: Path) -> None:
    body = {"history": [3, 7, 11], "k": 5}
    with TestClient(create_app(tiny_run.path, tmp_path / "a.sqlite3")) as client:
        from_torch = client.post("/recommend", json=body).json()["items"]
    with TestClient(create_app(tiny_run.path, tmp_path / "b.sqlite3", onnx=onnx_file)) as client:
        assert client.get("/model").json()["backend"] == "onnx"
        from_onnx = client.post("/recommend", json=body).json()["items"]
    assert [r["item"] for r in from_onnx] == [r["item"] for r in from_torch]


def test_cli_export(tiny_run: TinyRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    assert main(["export", "--run", str(tiny_run.path), "--output", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    OnnxRecommender(out)
    assert main(["export", "--run", str(tmp_path), "--output", str(out)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_a_failed_export_leaves_the_old_file_whole(tiny_run: TinyRun, onnx_file: Path,
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx

    served = tmp_path / "served.onnx"
    served.write_bytes(onnx_file.read_bytes())
    model, _ = load_model(tiny_run.path)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx, "save", interrupted)  # after the graph, before the metadata
    with pytest.raises(KeyboardInterrupt):
        export_onnx(model, served)

    assert served.read_bytes() == onnx_file.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["served.onnx"]
