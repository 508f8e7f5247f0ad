"""Loading a file never runs code, and every state prunekit saves loads with ``weights_only=True``."""

from __future__ import annotations

import enum
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import Field
from torch import nn

import prunekit as pk
from repo_paths import ROOT


class _Payload:
    """Unpickling this writes a file: the proof that a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def crafted_checkpoint(path: Path, marker: Path) -> None:
    weights = nn.Linear(4, 4).state_dict()
    with open(path, "wb") as f:
        pickle.dump({"state_dict": weights, "trainer": _Payload(marker)}, f)


def test_report_refuses_a_pickle_that_would_run_code_and_says_how_to_convert(tmp_path: Path) -> None:
    ckpt, marker = tmp_path / "evil.ckpt", tmp_path / "pwned.txt"
    # torch.save-style zip files and plain pickles are both refused
    crafted_checkpoint(ckpt, marker)
    zipped = tmp_path / "evil.pt"
    torch.save({"state_dict": nn.Linear(4, 4).state_dict(), "trainer": _Payload(marker)}, zipped)
    for path in (ckpt, zipped):
        result = subprocess.run(
            [sys.executable, "-m", "prunekit", "report", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 1
        assert not marker.exists(), "the checkpoint's code ran"
        assert "refusing to load" in result.stderr and "weights_only=False" in result.stderr  # how to convert a trusted file
        assert "Traceback" not in result.stderr


def test_report_reads_safetensors_with_the_safetensors_library(tmp_path: Path) -> None:
    safetensors = pytest.importorskip("safetensors.torch")
    model = nn.Linear(8, 8)
    with torch.no_grad():
        model.weight[:4] = 0
    safetensors.save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    result = subprocess.run(
        [sys.executable, "-m", "prunekit", "report", str(tmp_path / "model.safetensors")], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "50.00%" in result.stdout


class Shape(enum.Enum):
    SLOW = "slow"
    FAST = "fast"


class EnumConfig(pk.WeightSchedulerConfig):
    type: str = "enum_ramp_test"
    shape: Shape = Shape.SLOW
    power: float = Field(2.0, gt=0, le=8)


def test_every_pruning_state_loads_with_weights_only(tmp_path: Path) -> None:
    """Pruning.state_dict() with a custom scheduler whose config holds an Enum: plain values only."""

    @pk.register_scheduler("enum_ramp_test", config=EnumConfig, force=True)
    class EnumRamp(pk.Scheduler):
        """Polynomial ramp whose shape is an Enum (test)."""

        config_model = EnumConfig

        def update_sparsity_ratio(self, target_ratio, current_prune_step, total_prune_steps, masks=None, init_ratio=0.0):
            u = min(current_prune_step, total_prune_steps) / total_prune_steps
            p = self.config.power if self.config.shape is Shape.SLOW else 1 / self.config.power
            return init_ratio + (target_ratio - init_ratio) * u**p

    try:
        config = {"pruners": [{"target_sparsity": 0.5, "criterion": "snip_momentum", "pattern": "4x1",
                               "scheduler": {"type": "enum_ramp_test", "shape": "fast", "end_step": 6, "frequency": 2}}]}
        model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        session = pk.prepare_pruning(model, config, optimizer)
        for step in range(4):
            optimizer.zero_grad()
            model(torch.randn(4, 8)).pow(2).mean().backward()
            optimizer.step()
        torch.save(session.state_dict(), tmp_path / "state.pt")
        state = torch.load(tmp_path / "state.pt", weights_only=True)
        session.close()
        resumed = pk.Pruning(model, config)
        resumed.load_state_dict(state)
        assert resumed.global_step == 4 and resumed.history == session.history
        assert resumed.groups[0].scheduler.config.shape is Shape.FAST
    finally:
        pk.SCHEDULERS.unregister("enum_ramp_test")


def test_no_prunekit_module_loads_with_the_full_unpickler() -> None:
    """A grep-level guard: every torch.load in the package passes weights_only=True."""
    offenders = []
    for path in (ROOT / "prunekit").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.strip()
            if code.startswith(("#", 'f"', '"')):  # comments and message text
                continue
            if "torch.load(" in code and "weights_only=True" not in code or "weights_only=False" in code:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {code}")
    assert offenders == []
