"""Checkpoints are read with torch.load(weights_only=True): a planted pickle that
would run code is refused, naming the file, and its code never runs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from diffusers.optimization import get_scheduler

from generator.errors import UnsafeCheckpointError
from generator.training import (
    CHECKPOINT_FILE,
    CHECKPOINT_PREFIX,
    VAE_CHECKPOINTS,
    checkpoints,
    latest_checkpoint,
    load_checkpoint,
    load_latest_checkpoint,
    restore_vae,
    save_atomically,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


class Planted:
    """Unpickling this calls open(marker, "w"): the marker file appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def plant(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weights": {}, "state": {"step": 5, "x": Planted(marker)}}, path)
    return path


def test_the_planted_checkpoint_runs_code_when_fully_unpickled(tmp_path: Path):
    marker = tmp_path / "ran"
    path = plant(tmp_path / "state.pt", marker)

    torch.load(path, weights_only=False)  # what the loader used to do

    assert marker.exists()


def test_it_refuses_a_planted_training_checkpoint_without_running_it(tmp_path: Path):
    marker = tmp_path / "ran"
    folder = tmp_path / "run" / "checkpoints" / f"{CHECKPOINT_PREFIX}5"
    plant(folder / CHECKPOINT_FILE, marker)

    with pytest.raises(UnsafeCheckpointError, match=r"checkpoint-5/state\.pt holds"):
        load_latest_checkpoint(tmp_path / "run", None, None, None, {})
    with pytest.raises(UnsafeCheckpointError):
        restore_vae(tmp_path / "run", None)

    assert not marker.exists()


def test_it_refuses_a_planted_vae_checkpoint_without_running_it(tmp_path: Path):
    marker = tmp_path / "ran"
    folder = tmp_path / "run" / VAE_CHECKPOINTS / f"{CHECKPOINT_PREFIX}3"
    plant(folder / CHECKPOINT_FILE, marker)

    with pytest.raises(UnsafeCheckpointError, match=r"checkpoint-3/state\.pt holds"):
        latest_checkpoint(tmp_path / "run", VAE_CHECKPOINTS)

    assert not marker.exists()


def test_it_checkpoints_by_steps_and_once_the_minutes_have_passed(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(checkpoints.time, "monotonic", lambda: now[0])
    clock = checkpoints.CheckpointClock(every=10, minutes=3)

    early = [clock.due(step) for step in (1, 10)]
    now[0] += 179
    before = clock.due(11)
    now[0] += 1
    after = clock.due(12)
    clock.saved()
    again = clock.due(13)

    assert early == [False, True]
    assert (before, after, again) == (False, True, False)
    assert not checkpoints.CheckpointClock(every=0, minutes=0).due(10)


def test_it_reads_back_the_checkpoints_training_writes(tmp_path: Path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = get_scheduler(
        "cosine", optimizer, num_warmup_steps=2, num_training_steps=10
    )
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    payload = {
        "weights": {"w": model.weight.detach().clone()},
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "state": {"step": 1, "loss_history": [(1, 0.5)], "validation_history": []},
        "vae": {"weights": model.state_dict(), "scaling_factor": 0.18},
    }
    save_atomically(payload, tmp_path / "state.pt")

    loaded = load_checkpoint(tmp_path / "state.pt")

    assert torch.equal(loaded["weights"]["w"], model.weight)
    assert loaded["state"] == payload["state"]
    assert loaded["lr_scheduler"] == scheduler.state_dict()
    restored = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    restored.load_state_dict(loaded["optimizer"])
    assert restored.state_dict()["state"][0]["step"] == 1


SCANNED = ("generator", "xrayweb", "worker", "bench", "scripts", ".ci")
# accelerate's save_state/load_state write and read its own state files; its
# load_custom_state reads them with torch.load(weights_only=False) (accelerate
# 1.15.0, checkpointing.py). Training keeps its state in state.pt instead.
FORBIDDEN_CALLS = {
    "load_state",
    "save_state",
    "load_custom_state",
    "load_accelerator_state",
}


def unsafe_loads(tree: ast.AST) -> list[int]:
    """Lines that unpickle: torch.load without weights_only=True, pickle.load(s),
    numpy's allow_pickle=True, or accelerate's state files."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and unpickles(node, node.func)
    ]


def unpickles(call: ast.Call, func: ast.Attribute) -> bool:
    owner = func.value.id if isinstance(func.value, ast.Name) else ""
    keywords = {k.arg: k.value for k in call.keywords}

    def is_true(name: str) -> bool:
        value = keywords.get(name)
        return isinstance(value, ast.Constant) and value.value is True

    if owner == "torch" and func.attr == "load":
        return not is_true("weights_only")
    if owner == "pickle" and func.attr in ("load", "loads"):
        return True
    return func.attr in FORBIDDEN_CALLS or is_true("allow_pickle")


def test_the_scan_finds_each_unsafe_load():
    source = (
        "torch.load(p)\n"
        "torch.load(p, weights_only=False)\n"
        "torch.load(p, weights_only=True)\n"
        "pickle.loads(b)\n"
        "accelerator.load_state(folder)\n"
        "np.load(f, allow_pickle=True)\n"
        "np.load(f, allow_pickle=False)\n"
    )

    assert unsafe_loads(ast.parse(source)) == [1, 2, 4, 5, 6]


def test_no_code_reads_a_checkpoint_that_can_run_code():
    offenders = [
        f"{path.relative_to(PROJECT_ROOT)}:{number}"
        for folder in SCANNED
        for path in (PROJECT_ROOT / folder).rglob("*.py")
        for number in unsafe_loads(ast.parse(path.read_text()))
    ]

    assert offenders == []
