"""Exact resume: N steps == N/2 steps, save, load into fresh objects (also in a new process), N/2 more."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from prunekit.pruner import Pruning, prepare_pruning
from pruner_helpers import mlp, train_step

ROOT = Path(__file__).resolve().parents[2]
N = 24
CONFIG = {
    "pruners": [
        {
            "criterion": "snip_momentum",
            "pattern": "4x1",
            "scope": "global",
            "target_sparsity": 0.8,
            "scheduler": {"type": "iterative", "start_step": 2, "end_step": 20, "frequency": 3, "decay": "exp"},
        },
        {"name": "head", "op_names": ["^4$"], "op_types": ["Linear"], "pattern": "2:4", "target_sparsity": 0.5,
         "scheduler": {"type": "iterative", "start_step": 5, "end_step": 17, "frequency": 4, "decay": "cos"}},
    ]
}
CONFIG["pruners"][0]["excluded_op_names"] = ["^4$"]


def build() -> tuple[torch.nn.Module, torch.optim.Optimizer, Pruning]:
    model = mlp(seed=11)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return model, opt, prepare_pruning(model, CONFIG, opt)


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        train_step(model, opt, step)


def test_resume_in_process_and_in_new_process(tmp_path: Path) -> None:
    model, opt, session = build()
    train(model, opt, range(N))
    reference = {"model": model.state_dict(), "masks": session.masks, "history": session.history}
    assert 0 < len(session.history) and session.history[-1].step == 20

    model, opt, session = build()
    train(model, opt, range(N // 2))
    assert 2 < session.history[-1].step < 20  # mid-schedule
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "pruning": session.state_dict()}, ckpt)

    # (1) fresh objects in this process
    model2, opt2, session2 = build()
    state = torch.load(ckpt)
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["optimizer"])
    session2.load_state_dict(state["pruning"])
    assert session2.global_step == N // 2
    train(model2, opt2, range(N // 2, N))
    _assert_same(reference, model2.state_dict(), session2.masks, session2.history)

    # (2) fresh objects in a new process
    out = tmp_path / "resumed.pt"
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_resume import build, train, N
        torch.set_num_threads(1)
        model, opt, session = build()
        state = torch.load({str(ckpt)!r})
        model.load_state_dict(state["model"]); opt.load_state_dict(state["optimizer"])
        session.load_state_dict(state["pruning"])
        train(model, opt, range(N // 2, N))
        torch.save({{"model": model.state_dict(), "masks": session.masks, "history": session.history}}, {str(out)!r})
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    resumed = torch.load(out, weights_only=False)
    _assert_same(reference, resumed["model"], resumed["masks"], resumed["history"])


def _assert_same(reference: dict, model_state: dict, masks: dict, history: list) -> None:
    assert history == reference["history"]
    for name, mask in reference["masks"].items():
        assert torch.equal(masks[name], mask), name
    for key, value in reference["model"].items():
        assert torch.equal(model_state[key], value), key


def test_state_dict_holds_scores_and_rejects_other_config() -> None:
    model, opt, session = build()
    train(model, opt, range(6))
    state = session.state_dict()
    assert state["global_step"] == 6
    assert set(state["groups"]["pruner0"]["scores"]) == {"0", "2"}
    import pytest
    from prunekit.errors import PruningError

    other = Pruning(mlp(seed=11), {"pruners": [{"target_sparsity": 0.5}]})
    with pytest.raises(PruningError, match="different config"):
        other.load_state_dict(state)
