"""Data-parallel training under torchrun: two processes train as one process would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import bert4rec
from bert4rec import synthetic
from bert4rec.cli import main
from bert4rec.data import PrepareOptions, load_interactions, prepare_frame
from bert4rec.distributed import Distributed, launched, share
from bert4rec.masking import cloze_mask, gather_windows
from bert4rec.model import BERT4RecConfig
from bert4rec.training import TrainConfig, Trainer

# One layer, no dropout (dropout differs between ranks by design); 103 users and batches of 51
# make shares of 26 and 25 rows and a last batch of one row, where rank 1 has nothing to train
# on. Warm-up is longer than the run, so the learning rate never depends on the clock.
SETTINGS = ["--preset", "demo", "--epochs", "2", "--threads", "1", "--quiet",
            "--set", "max_len=12", "--set", "hidden_size=16", "--set", "num_layers=1",
            "--set", "hidden_dropout=0", "--set", "attention_dropout=0",
            "--set", "batch_size=51", "--set", "eval_every=1"]


def test_share_splits_a_batch_into_contiguous_parts_in_rank_order() -> None:
    rows = list(range(7))
    parts = [rows[share(7, rank, 3)] for rank in range(3)]
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
    assert [rows[share(7, rank, 1)] for rank in range(1)] == [rows]
    # Fewer rows than ranks: the last ranks get nothing (and train with a zero weight).
    assert [list(range(1))[share(1, rank, 2)] for rank in range(2)] == [[0], []]


def test_rank_losses_average_to_the_whole_batch_loss_and_gradient() -> None:
    frame = synthetic.generate(num_users=41, num_items=30, min_length=5, max_length=14)
    data = prepare_frame(frame, PrepareOptions())
    config = BERT4RecConfig(num_items=data.num_items, max_len=12, hidden_size=16, num_layers=1,
                            num_heads=2, hidden_dropout=0.0, attention_dropout=0.0)
    trainer = Trainer(data, config, TrainConfig(batch_size=41, threads=1), progress=False)
    (batch,) = trainer.epoch_batches()  # 41 rows: shares of 21 and 20
    tokens = gather_windows(trainer.train_items, trainer.starts[batch], trainer.ends[batch])
    inputs, labels = cloze_mask(tokens, config.mask_id, 0.4, 5,
                                generator=torch.Generator().manual_seed(1))
    params = list(trainer.model.parameters())
    whole = trainer.model.loss(inputs, labels)
    whole_grads = torch.autograd.grad(whole, params)

    seen: list[torch.Tensor] = []

    def rank_forward(inputs: torch.Tensor, labels: torch.Tensor, negatives: None) -> torch.Tensor:
        seen.append(labels)
        return trainer.model.loss(inputs, labels, negatives)

    parts = []
    for rank in range(2):  # what each rank computes before DDP averages the gradients
        trainer.group = Distributed(rank=rank, world_size=2, local_rank=rank, local_world_size=2)
        trainer.ddp = rank_forward  # type: ignore[assignment]
        parts.append(trainer._rank_loss(inputs, labels, None))
    assert [len(rows) for rows in seen] == [21, 20]
    assert torch.equal(torch.cat(seen), labels)  # different rows, together the whole batch
    average = (parts[0] + parts[1]) / 2
    torch.testing.assert_close(average, whole)
    for got, want in zip(torch.autograd.grad(average, params), whole_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_launched_reads_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not launched()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not launched()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched()


def test_torchrun_trains_bert4rec_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = synthetic.write(tmp_path / "log.csv", synthetic.generate(
        num_users=20, num_items=30, max_length=14))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--model", "pop", "--data", str(path),
                 "--output", str(tmp_path / "run")]) == 2
    assert "torchrun trains bert4rec only; train pop in one process" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_processes_match_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    path = synthetic.write(tmp_path / "log.csv", synthetic.generate(
        num_users=103, num_items=30, min_length=5, max_length=14, seed=3))
    src = str(Path(bert4rec.__file__).resolve().parents[1])
    env = os.environ | {"PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
                        "OMP_NUM_THREADS": "1"}
    two = tmp_path / "two"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
         "-m", "bert4rec", "train", "--model", "bert4rec", "--data", str(path),
         "--output", str(two), *SETTINGS],
        capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    one = tmp_path / "one"
    assert main(["train", "--model", "bert4rec", "--data", str(path), "--output", str(one),
                 *SETTINGS]) == 0

    # Rank 0 alone spoke and wrote: one line per epoch, one run, no checkpoint left behind.
    assert done.stderr.count("epoch    1  loss") == 1
    assert done.stderr.count(f"saved {two}") == 1
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    info_two = json.loads((two / "run.json").read_text())
    info_one = json.loads((one / "run.json").read_text())
    assert info_two["provenance"]["processes"] == 2
    assert info_one["provenance"]["processes"] == 1

    # Same masks, gradients of the same global mean: the same training, up to rounding.
    history_two, history_one = info_two["metrics"]["history"], info_one["metrics"]["history"]
    assert [r["step"] for r in history_two] == [r["step"] for r in history_one] == [3, 6]
    for a, b in zip(history_two, history_one, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["valid_NDCG@10"] == pytest.approx(b["valid_NDCG@10"], abs=1e-6)
    weights_two, weights_one = load_file(two / "model.safetensors"), \
        load_file(one / "model.safetensors")
    assert weights_two.keys() == weights_one.keys()  # the model's own names, no "module."
    for name, value in weights_one.items():
        torch.testing.assert_close(weights_two[name], value, rtol=1e-5, atol=1e-6)

    model, run = bert4rec.load_model(two)
    run.check_data(load_interactions(path))
    ids, _ = bert4rec.recommend(model, [np.array([1, 2, 3])], k=5)
    assert ids.shape == (1, 5) and (ids > 0).all()


def _torchrun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    src = str(Path(bert4rec.__file__).resolve().parents[1])
    env = os.environ | {"PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
                        "OMP_NUM_THREADS": "1", "BERT4REC_CACHE": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *args],
        capture_output=True, text=True, timeout=120, env=env, check=False)


def test_a_failure_on_rank_0_stops_every_rank_with_its_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item\nu1,\nu2,b\n")
    done = _torchrun(["-m", "bert4rec", "train", "--model", "bert4rec", "--data", str(bad),
                      "--output", str(tmp_path / "run"), *SETTINGS], tmp_path)
    assert done.returncode != 0
    assert "error: " in done.stderr and "line 2" in done.stderr  # rank 0's own message
    assert "rank 0 stopped" in done.stderr  # rank 1 says why it stops, with no traceback
    assert "Connection closed" not in done.stderr


def test_ranks_on_different_data_are_refused_not_left_waiting(tmp_path: Path) -> None:
    for rank, users in ((0, 40), (1, 60)):
        synthetic.write(tmp_path / f"log{rank}.csv", synthetic.generate(
            num_users=users, num_items=30, min_length=5, max_length=14, seed=rank))
    script = tmp_path / "train.py"
    script.write_text(
        "import os\n"
        "from bert4rec.api import train\n"
        "from bert4rec.data import load_interactions\n"
        "from bert4rec.errors import RunError\n"
        f"data = load_interactions(r'{tmp_path}/log' + os.environ['RANK'] + '.csv')\n"
        "try:\n"
        "    train(data, 'demo', epochs=1, threads=1, progress=False, log=None)\n"
        "except RunError as exc:\n"
        "    print('refused:', exc)\n"
        "    raise SystemExit(2)\n")
    done = _torchrun([str(script)], tmp_path)
    assert done.returncode != 0
    assert "refused: the processes of this torchrun hold different data or settings" in \
        done.stdout
