"""Hardening of the torch.ao-style data sparsifier: upstream compatibility and bounded costs.

One section per defect: the scheduler flag torch.ao subclasses read, ``ValueError`` after a squash,
per-entry state in state dicts, masks that compute like torch.ao's float masks, blocks larger than
the data, booleans refused as numbers, and state that loads with ``torch.load(weights_only=True)``.
Names added by these fixes are imported inside the tests, so the file collects on older code.
"""

from __future__ import annotations

import copy
import enum
import io
import math
import pickle
import types
import warnings
from typing import Any

import pytest
import torch
import yaml
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from prunekit.data import BaseDataSparsifier, DataConfigError, DataNormSparsifier, build_data_sparsity
from prunekit.errors import ConfigError, PruningError
from prunekit.schedulers.data import (
    AGPDataScheduler,
    BaseDataScheduler,
    DataSchedulerConfig,
    GammaDataScheduler,
    LinearDataScheduler,
    StepDataScheduler,
)


class Mode(enum.Enum):
    """An enum a custom scheduler or sparsifier keeps in its config (module level: importable)."""

    FAST = "fast"
    SLOW = "slow"


class ThresholdSparsifier(BaseDataSparsifier):
    """Keeps |x| >= threshold."""

    def update_mask(self, name: str, data: torch.Tensor, threshold: float = 0.5, **config: Any) -> torch.Tensor:
        return data.abs() >= threshold


def _deep_equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_deep_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _weights_only_round_trip(obj: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# ---------------------------------------------------------------------------- 1. _get_sp_called_within_step
class StepSLScheduler(BaseDataScheduler):
    """torch.ao's Lightning-test scheduler, ported: multiply the value by gamma every step_size steps.

    Like torch.optim's StepLR, it reads ``_get_sp_called_within_step`` to warn when
    ``get_schedule_param()`` is called from outside ``step()``.
    """

    def __init__(
        self,
        data_sparsifier: BaseDataSparsifier,
        schedule_param: str = "sparsity_level",
        step_size: int = 1,
        gamma: float = 2.0,
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        self.gamma = gamma
        self.step_size = step_size
        self.seen_flags: list[bool] = []
        super().__init__(data_sparsifier, schedule_param, last_epoch, verbose)

    def get_schedule_param(self) -> dict[str, Any]:
        self.seen_flags.append(self._get_sp_called_within_step)
        if not self._get_sp_called_within_step:
            warnings.warn(
                "To get the last sparsity level computed by the scheduler, please use `get_last_param()`.",
                UserWarning,
                stacklevel=2,
            )
        groups = self.data_sparsifier.data_groups
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return {name: config[self.schedule_param] for name, config in groups.items()}
        return {name: config[self.schedule_param] * self.gamma for name, config in groups.items()}


def test_a_torch_ao_scheduler_reading_get_sp_called_within_step_runs_and_warns_where_upstream_does() -> None:
    sp = DataNormSparsifier(sparsity_level=0.1)
    sp.add_data("w", torch.randn(8, 8))
    levels = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning inside step(), nor for the right order of steps
        scheduler = StepSLScheduler(sp, step_size=2, gamma=2.0)
        for _ in range(4):
            sp.step()
            scheduler.step()
            levels.append(scheduler.get_last_param()["w"])
    assert levels == pytest.approx([0.1, 0.2, 0.2, 0.4])  # multiplied at steps 2 and 4
    assert scheduler.seen_flags == [True] * 5, "True while step() calls get_schedule_param()"
    assert scheduler._get_sp_called_within_step is False, "False again after step()"
    with pytest.warns(UserWarning, match="get_last_param"):
        scheduler.get_schedule_param()  # called from outside step(): upstream's warning
    assert "_get_sp_called_within_step" not in scheduler.state_dict(), "a transient flag, not state"
    scheduler.load_state_dict({**scheduler.state_dict(), "_get_sp_called_within_step": True})
    assert scheduler._get_sp_called_within_step is False, "a saved flag (torch.ao saves it) is ignored"


def test_get_sp_called_within_step_is_reset_when_get_schedule_param_raises() -> None:
    class Failing(StepSLScheduler):
        def get_schedule_param(self) -> dict[str, Any]:
            if self.last_epoch == 2:
                raise RuntimeError("boom")
            return super().get_schedule_param()

    sp = DataNormSparsifier(sparsity_level=0.1)
    sp.add_data("w", torch.randn(4, 4))
    scheduler = Failing(sp)
    sp.step()
    scheduler.step()
    with pytest.raises(RuntimeError, match="boom"):
        scheduler.step()
    assert scheduler._get_sp_called_within_step is False


def test_the_ported_step_scheduler_drives_the_lightning_callback_without_warnings() -> None:
    pytest.importorskip("lightning")
    from prunekit.integrations.lightning import TrainingAwareDataSparsity

    module = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    callback = TrainingAwareDataSparsity(
        DataNormSparsifier, {"sparsity_level": 0.1}, StepSLScheduler, {"step_size": 1, "gamma": 2.0}
    )
    trainer = types.SimpleNamespace(current_epoch=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        callback.on_train_start(trainer, module)
        for epoch in range(3):
            trainer.current_epoch = epoch
            callback.on_train_epoch_start(trainer, module)
            callback.on_train_epoch_end(trainer, module)
        callback.on_train_end(trainer, module)
    assert [h["sparsity_level"]["0.weight"] for h in callback.history] == pytest.approx([0.1, 0.2, 0.4])


# ---------------------------------------------------------------------------- 2. ValueError after a squash
def test_get_data_after_squash_raises_a_value_error_as_torch_ao_does() -> None:
    from prunekit.data import SquashedDataError

    sp = ThresholdSparsifier()
    sp.add_data("x", torch.randn(4, 4))
    sp.step()
    sp.squash_mask()
    with pytest.raises(ValueError, match=r"'x' was squashed.*return_original=False") as info:
        sp.get_data("x")
    assert isinstance(info.value, SquashedDataError) and isinstance(info.value, PruningError)
    assert sp.get_data("x", return_original=False) is sp.get_data("x", return_original=False)


# ---------------------------------------------------------------------------- 3. per-entry state
class StatefulSparsifier(BaseDataSparsifier):
    """Keeps per-entry state next to the mask, as torch.ao's tests do (``step_count``)."""

    def update_mask(self, name: str, data: torch.Tensor, threshold: float = 0.5, **config: Any) -> torch.Tensor:
        state = self.state[name]
        state["step_count"] = state.get("step_count", 0) + 1
        running = state.get("running")
        state["running"] = data.abs().clone() if running is None else torch.maximum(running, data.abs())
        state["shape"] = tuple(data.shape)
        state["mode"] = Mode.SLOW if state["step_count"] % 2 else Mode.FAST
        state["history"] = [*state.get("history", []), {"step": state["step_count"]}]
        return state["running"] >= threshold


def _stateful(steps: int = 3) -> StatefulSparsifier:
    torch.manual_seed(0)
    sp = StatefulSparsifier(threshold=0.5)
    sp.add_data("a", torch.randn(4, 6))
    sp.add_data("b.c", torch.randn(5), threshold=1.0)
    for _ in range(steps):
        sp.step()
    return sp


def test_state_dict_saves_and_load_restores_every_key_of_each_entrys_state() -> None:
    src = _stateful()
    sd = src.state_dict()
    entry = sd["state"]["a"]
    assert set(entry) == {"mask", "step_count", "running", "shape", "mode", "history"}
    assert isinstance(entry["mask"], dict) and entry["mask"]["bits"].dtype == torch.uint8, "the mask stays packed"
    assert entry["step_count"] == 3 and entry["shape"] == (4, 6)
    assert torch.equal(entry["running"], src.state["a"]["running"])
    assert entry["running"].data_ptr() != src.state["a"]["running"].data_ptr(), "tensors are cloned"
    src.state["a"]["history"].append({"step": 99})
    assert entry["history"] == [{"step": 1}, {"step": 2}, {"step": 3}], "plain values are deep-copied"
    src.state["a"]["history"].pop()

    frozen = copy.deepcopy(sd)
    dst = StatefulSparsifier()
    dst.load_state_dict(sd)
    assert _deep_equal(sd, frozen), "load_state_dict mutated its input"
    for name in ("a", "b.c"):
        got, want = dst.state[name], src.state[name]
        assert set(got) == set(want)
        assert got["step_count"] == want["step_count"] and got["shape"] == want["shape"] and got["mode"] is want["mode"]
        assert got["history"] == want["history"] and got["history"] is not sd["state"][name]["history"]
        assert torch.equal(got["running"], want["running"])
        assert got["running"].data_ptr() != sd["state"][name]["running"].data_ptr(), "load never aliases its input"
        assert torch.equal(got["mask"], want["mask"]) and got["mask"].dtype == torch.bool
    src.step()
    dst.step()
    assert dst.state["a"]["step_count"] == 4 and torch.equal(dst.get_mask("a"), src.get_mask("a"))


def test_a_malformed_entry_state_is_reported_before_anything_changes() -> None:
    sd = _stateful().state_dict()
    target = _stateful(steps=1)
    before = copy.deepcopy(target.state)
    broken = copy.deepcopy(sd)
    broken["state"]["a"] = ["not", "a", "mapping"]
    broken["state"]["b.c"]["mode"] = {"__prunekit_enum__": "no.such.module:Mode", "name": "FAST"}
    with pytest.raises(ValueError) as info:
        target.load_state_dict(broken)
    text = str(info.value)
    assert "state['a']" in text and "state['b.c']['mode']" in text and "no.such.module" in text
    assert _deep_equal(target.state, before), "nothing changed"


def test_replacing_data_with_reuse_mask_keeps_the_entrys_state() -> None:
    sp = _stateful()
    sp.add_data("a", torch.randn(4, 6))  # the README loop: new data under the same name every batch
    assert sp.state["a"]["step_count"] == 3 and "running" in sp.state["a"]
    sp.add_data("a", torch.randn(4, 6), reuse_mask=False)
    assert set(sp.state["a"]) == {"mask"}, "a fresh mask starts a fresh entry"
    clone = pickle.loads(pickle.dumps(_stateful()))
    assert clone.state["a"]["step_count"] == 3


# ---------------------------------------------------------------------------- 4. masks that compute like floats
def _masked_example() -> tuple[ThresholdSparsifier, torch.Tensor, torch.Tensor]:
    x = torch.tensor([[0.1, 2.0, -0.7, 0.2], [1.0, -0.1, 0.3, 3.0]])
    sp = ThresholdSparsifier(threshold=0.5)
    sp.add_data("x", x)
    sp.step()
    return sp, x, (x.abs() >= 0.5).float()  # the last one: torch.ao's float mask


def test_get_mask_is_bool_and_computes_like_torch_aos_float_mask() -> None:
    sp, x, ref = _masked_example()
    mask = sp.get_mask("x")
    assert mask.dtype == torch.bool and isinstance(mask, torch.Tensor)
    x64 = x.double()
    cases = {
        "mean": (mask.mean(), ref.mean()),
        "1 - mask": (1 - mask, 1 - ref),
        "1.0 - mask": (1.0 - mask, 1.0 - ref),
        "mask - mask": (mask - mask, ref - ref),
        "-mask": (-mask, -ref),
        "mask + mask": (mask + mask, ref + ref),
        "mask * x": (mask * x, ref * x),
        "x * mask": (x * mask, x * ref),
        "mask * 0.5": (mask * 0.5, ref * 0.5),
        "sum / numel": (mask.sum() / mask.numel(), ref.sum() / ref.numel()),
        "std": (mask.std(), ref.std()),
        "norm": (mask.norm(), ref.norm()),
        "x64 @ mask.T": (x64 @ mask.T, x64 @ ref.double().T),
        "mask == 1": (mask == 1, ref == 1),
        "mask > 0.5": (mask > 0.5, ref > 0.5),
        "mask != ref": (mask != ref, ref != ref),
        "mask < 1": (mask < 1, ref < 1),
        "where": (torch.where(mask == 0, 0.0, x), torch.where(ref == 0, 0.0, x)),
    }
    for label, (got, want) in cases.items():
        assert type(got) is torch.Tensor, f"{label}: results are plain tensors, got {type(got).__name__}"
        assert got.shape == want.shape, label
        if want.is_floating_point():
            assert got.is_floating_point() and torch.allclose(got.to(want.dtype), want), label
        else:
            assert torch.equal(got, want), label
    assert float(mask.mean()) == pytest.approx(0.5) and (mask.sum() / mask.numel()).item() == pytest.approx(0.5)


def test_get_mask_is_the_live_mask() -> None:
    sp, x, _ = _masked_example()
    mask = sp.get_mask("x")
    x.mul_(0.0)  # the data changes in place; the next step recomputes the mask
    sp.step()
    assert not bool(mask.any()), "step() updates the mask seen through get_mask in place"
    mask.fill_(True)  # and in-place writes reach the sparsifier
    assert bool(sp.get_mask("x").all()) and bool(sp.state["x"]["mask"].all())
    assert sp.state["x"]["mask"].dtype == torch.bool and type(sp.state["x"]["mask"]) is torch.Tensor
    with pytest.raises(RuntimeError, match="bool"):
        mask.mul_(0.5)  # an in-place float update cannot be stored in a bool mask: not retried
    assert bool(sp.state["x"]["mask"].all())


def test_get_mask_saves_as_a_plain_tensor_and_copies() -> None:
    sp, _, ref = _masked_example()
    mask = sp.get_mask("x")
    loaded = _weights_only_round_trip({"mask": mask})["mask"]
    assert type(loaded) is torch.Tensor and torch.equal(loaded, ref.bool())
    snapshot = copy.deepcopy(mask)
    mask.fill_(False)
    assert torch.equal(snapshot, ref.bool()) and float(snapshot.mean()) == pytest.approx(0.5)
    assert type(pickle.loads(pickle.dumps(mask))) is torch.Tensor


class UpstreamTestSparsifier(BaseDataSparsifier):
    """torch.ao's test sparsifier, as written there: writes through get_mask, counts in state."""

    def update_mask(self, name: str, data: torch.Tensor, **kwargs: Any) -> None:
        mask = self.get_mask(name)
        mask[0] = 0
        linear_state = self.state[name]
        linear_state["step_count"] = linear_state.get("step_count", 0) + 1


def test_torch_aos_test_sparsifier_runs_as_written() -> None:
    sp = UpstreamTestSparsifier(data_list=[("a", torch.randn(4, 4)), ("b", nn.Embedding(5, 3))], sparsity_level=0.5)
    for name in sp.data_groups:
        assert (1.0 - sp.get_mask(name).mean()) == 0 and bool((sp.get_mask(name)[0] == 1).all())
    for _ in range(3):
        sp.step()
    other = UpstreamTestSparsifier()
    other.load_state_dict(sp.state_dict())
    for name in sp.data_groups:
        assert bool((sp.get_mask(name)[0] == 0).all()) and sp.state[name]["step_count"] == 3
        assert other.state[name]["step_count"] == 3 and torch.all(other.state[name]["mask"] == sp.state[name]["mask"])


class AoStyleSparsifier(BaseDataSparsifier):
    """Writes its mask the way torch.ao's DataNormSparsifier does: ``mask.data = <int8 tensor>``."""

    def update_mask(self, name: str, data: torch.Tensor, threshold: float = 0.5, **config: Any) -> None:
        mask = self.get_mask(name)
        mask.data = (data.abs() >= threshold).to(torch.int8)


def test_an_update_mask_that_rebinds_mask_data_is_honoured() -> None:
    x = torch.tensor([0.1, 2.0, -0.7, 0.2])
    sp = AoStyleSparsifier(threshold=0.5)
    sp.add_data("x", x)
    live = sp.get_mask("x")
    sp.step()
    assert sp.state["x"]["mask"].dtype == torch.bool
    assert sp.get_mask("x").tolist() == [False, True, True, False] and live.tolist() == [False, True, True, False]
    assert sp.get_mask("x") is live and live.dtype == torch.bool, "the rebound view is the live mask again"
    sp.state["x"]["mask"].fill_(True)
    assert bool(live.all())


def test_internal_step_paths_do_not_pay_for_the_mask_subclass(monkeypatch: pytest.MonkeyPatch) -> None:
    from prunekit.data.masks import MaskView

    calls = []
    original = MaskView.__torch_function__.__func__

    def counting(cls: type, func: Any, types_: Any, args: Any = (), kwargs: Any = None) -> Any:
        calls.append(func)
        return original(cls, func, types_, args, kwargs)

    monkeypatch.setattr(MaskView, "__torch_function__", classmethod(counting))
    sp = DataNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 4), zeros_per_block=2)
    sp.add_data("w", torch.randn(64, 64))
    sp.step()
    sp.get_data("w", return_original=False)
    sp.state_dict()
    sp.squash_mask()
    assert calls == [], "step(), get_data, state_dict and squash_mask use the plain bool mask"
    assert float(sp.get_mask("w").mean()) == pytest.approx(0.75) and calls, "get_mask() is the subclass"


# ---------------------------------------------------------------------------- 5. blocks larger than the data
def _mask_of(data: torch.Tensor, **config: Any) -> torch.Tensor:
    sp = DataNormSparsifier(**config)
    sp.add_data("x", data)
    sp.step()
    return sp.get_mask("x").clone()


@pytest.mark.parametrize(
    ("data_shape", "block", "clamped"),
    [
        ((8, 8), (2**20, 2**20), (8, 8)),
        ((8, 8), (2**20, 2), (8, 2)),
        ((8, 8), (3, 2**20), (3, 8)),
        ((5,), (1, 2**20), (1, 5)),
        ((6, 1), (2**20, 2**20), (1, 6)),  # N x 1 data is the row vector (1, N)
    ],
)
def test_a_block_larger_than_the_data_is_clamped_to_it_never_allocated(
    data_shape: tuple[int, ...], block: tuple[int, int], clamped: tuple[int, int]
) -> None:
    torch.manual_seed(0)
    data = torch.randn(data_shape)
    for level, zeros in [(1.0, None), (1.0, 3), (0.5, None), (0.5, 1)]:
        got = _mask_of(data, sparsity_level=level, sparse_block_shape=block, zeros_per_block=zeros)
        want = _mask_of(data, sparsity_level=level, sparse_block_shape=clamped, zeros_per_block=None if zeros is None else min(zeros, math.prod(clamped)))
        assert torch.equal(got, want), (level, zeros)
    sp = DataNormSparsifier(sparse_block_shape=block)
    sp.add_data("x", data)
    assert sp.data_groups["x"]["sparse_block_shape"] == block, "the config keeps the value given"


@pytest.mark.parametrize("block", [(16, 16), (16, 2), (3, 16), (32, 1)])
def test_blocks_larger_than_the_data_give_torch_aos_mask(block: tuple[int, int]) -> None:
    """torch.ao pads the data up to the block (one partial block): the clamp keeps its mask."""
    ao_module = pytest.importorskip("torch.ao.pruning._experimental.data_sparsifier")
    torch.manual_seed(0)
    for shape in [(8, 8), (6, 10)]:
        data = torch.randn(shape)
        for level, zeros in [(1.0, None), (1.0, 3), (0.5, 2), (0.7, None)]:
            count = math.prod(block) if zeros is None else zeros
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ao = ao_module.DataNormSparsifier(sparsity_level=level, sparse_block_shape=block, zeros_per_block=count)
                ao.add_data("x", data.clone())
                ao.step()
            ours = _mask_of(data, sparsity_level=level, sparse_block_shape=block, zeros_per_block=zeros)
            assert torch.equal(ours, ao.get_mask("x").bool()), (shape, level, zeros)


class BlockScheduler(BaseDataScheduler):
    """Schedules ``sparse_block_shape`` (tuples): grows it by ``growth`` every step (every other one when SLOW)."""

    def __init__(
        self,
        data_sparsifier: BaseDataSparsifier,
        mode: Mode = Mode.FAST,
        growth: tuple[int, int] = (1, 2),
        schedule_param: str = "sparse_block_shape",
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        self.mode = mode
        self.growth = tuple(growth)
        super().__init__(data_sparsifier, schedule_param, last_epoch, verbose)

    def get_schedule_param(self) -> dict[str, Any]:
        if self.last_epoch == 0 or (self.mode is Mode.SLOW and self.last_epoch % 2):
            return {}
        gh, gw = self.growth
        return {n: (c[self.schedule_param][0] * gh, c[self.schedule_param][1] * gw) for n, c in self.data_sparsifier.data_groups.items()}


class BlockConfig(DataSchedulerConfig):
    """A data scheduler config holding an Enum and a tuple."""

    type: str = "test_blocks"
    mode: Mode = Mode.FAST
    growth: tuple[int, int] = (1, 2)
    schedule_param: str = "sparse_block_shape"


def test_a_block_a_data_scheduler_writes_is_clamped_at_step() -> None:
    torch.manual_seed(0)
    data = torch.randn(8, 8)
    sp = DataNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=1)
    sp.add_data("x", data)
    scheduler = BlockScheduler(sp, growth=(2**20, 2**18))
    sp.step()
    scheduler.step()
    assert sp.data_groups["x"]["sparse_block_shape"] == (2**20, 2**20)
    sp.step()  # would allocate 4 TiB without the clamp
    assert torch.equal(sp.get_mask("x"), _mask_of(data, sparsity_level=1.0, sparse_block_shape=(8, 8), zeros_per_block=1))


class _Allocations(TorchDispatchMode):
    """Bytes of the new storages every op creates (a tally of everything allocated)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types_: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.total += t.untyped_storage().nbytes()
        return out


def _allocated_ratio(data: torch.Tensor, block: tuple[int, int], zeros: int | None) -> float:
    sp = DataNormSparsifier(sparsity_level=0.5, sparse_block_shape=block, zeros_per_block=zeros)
    sp.add_data("x", data)
    with _Allocations() as tally:
        sp.step()
    return tally.total / (data.numel() * data.element_size())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_update_mask_allocates_a_small_multiple_of_the_data_whatever_the_config(dtype: torch.dtype) -> None:
    """Everything the ops of a step allocate, summed (not a peak): a small multiple of the data.

    About 6x the data's bytes for float32 at worst and 12x for bfloat16 (scores are float32); the
    bound leaves room. Kernel-internal scratch memory is not seen by this tally.

    Blocks up to the data's size and beyond, N:M inside them (the sort and the pairwise paths),
    edge blocks, and data just above the size where the threshold is found from a sample.
    """
    torch.manual_seed(0)
    data = torch.randn(128, 96).to(dtype)
    ratios = {}
    for block in [(1, 1), (1, 4), (2, 3), (4, 8), (5, 7), (1, 33), (1, 95), (127, 1), (65, 49), (127, 95), (2**20, 2**20)]:
        for zeros in [None, 1, 3, 31, 100]:
            ratios[(block, zeros)] = _allocated_ratio(data, block, None if zeros is None else min(zeros, math.prod(block)))
    for shape, block in [((256, 257), (1, 1)), ((256, 771), (1, 3)), ((512, 516), (2, 2)), ((256, 1799), (1, 7))]:
        for zeros in [None, 1]:
            ratios[(shape, block, zeros)] = _allocated_ratio(torch.randn(shape).to(dtype), block, zeros)
    config, ratio = max(ratios.items(), key=lambda kv: kv[1])
    assert ratio <= 16, f"{config} allocated {ratio:.1f}x the data's bytes"


# ---------------------------------------------------------------------------- 6. booleans are not numbers
@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"sparsity_level": True}, "sparsity_level"),
        ({"sparsity_level": False}, "sparsity_level"),
        ({"zeros_per_block": True}, "zeros_per_block"),
        ({"sparse_block_shape": (True, 1)}, "sparse_block_shape"),
        ({"sparse_block_shape": [4, False]}, "sparse_block_shape"),
    ],
)
def test_booleans_are_refused_as_numbers_by_the_sparsifier(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(DataConfigError, match=rf"defaults\.{key}.*bool"):
        DataNormSparsifier(**kwargs)
    sp = DataNormSparsifier()
    with pytest.raises(DataConfigError, match=rf"data_groups\['x'\]\.{key}.*bool"):
        sp.add_data("x", torch.randn(4, 4), **kwargs)
    assert "x" not in sp.data_groups


def test_a_boolean_a_data_scheduler_writes_is_refused_at_step() -> None:
    sp = DataNormSparsifier(sparsity_level=0.5)
    sp.add_data("x", torch.randn(4, 4))
    sp.data_groups["x"]["sparsity_level"] = True  # what a buggy scheduler could write
    with pytest.raises(DataConfigError, match=r"data_groups\['x'\]\.sparsity_level.*bool"):
        sp.step()
    sp.data_groups["x"].update(sparsity_level=0.5, zeros_per_block=True)
    with pytest.raises(DataConfigError, match=r"data_groups\['x'\]\.zeros_per_block.*bool"):
        sp.step()


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"sparsifier": {"sparsity_level": True}}, "sparsifier.sparsity_level"),
        ({"sparsifier": {"zeros_per_block": True}}, "sparsifier.zeros_per_block"),
        ({"sparsifier": {"sparse_block_shape": [True, 4]}}, "sparsifier.sparse_block_shape"),
        ({"scheduler": {"type": "gamma", "gamma": True}}, "scheduler.gamma"),
        ({"scheduler": {"type": "gamma", "gamma": 2.0, "threshold_sl": True}}, "scheduler.threshold_sl"),
        ({"scheduler": {"type": "step", "gamma": 2.0, "step_size": True}}, "scheduler.step_size"),
        ({"scheduler": {"type": "linear", "target": True, "end_step": 4}}, "scheduler.target"),
        ({"scheduler": {"type": "agp", "target": 0.5, "end_step": True}}, "scheduler.end_step"),
        ({"scheduler": {"type": "agp", "target": 0.5, "end_step": 4, "start_step": False}}, "scheduler.start_step"),
        ({"scheduler": {"type": "gamma", "gamma": 2.0, "last_epoch": False}}, "scheduler.last_epoch"),
    ],
)
def test_booleans_are_refused_as_numbers_in_the_yaml_section(section: dict[str, Any], key: str) -> None:
    text = yaml.safe_dump({"data_sparsity": {"module_types": ["Embedding"], **section}})
    model = nn.ModuleDict({"emb": nn.Embedding(8, 8)})
    with pytest.raises(ConfigError, match=rf"data_sparsity\.{key}: .*bool") as info:
        build_data_sparsity(yaml.safe_load(text)["data_sparsity"], model)
    assert len(info.value.problems) == 1


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (lambda sp: GammaDataScheduler(sp, gamma=True), "gamma"),
        (lambda sp: StepDataScheduler(sp, step_size=True, gamma=2.0), "step_size"),
        (lambda sp: LinearDataScheduler(sp, target=0.5, end_step=True), "end_step"),
        (lambda sp: AGPDataScheduler(sp, target=True, end_step=4), "target"),
    ],
)
def test_booleans_are_refused_as_numbers_by_the_data_schedulers(build: Any, key: str) -> None:
    sp = DataNormSparsifier(sparsity_level=0.1)
    sp.add_data("x", torch.randn(4, 4))
    with pytest.raises(ConfigError, match=rf"{key}.*bool"):
        build(sp)


# ---------------------------------------------------------------------------- 7. weights_only loads
def test_sparsifier_state_with_enums_tuples_and_entry_state_loads_with_weights_only() -> None:
    src = StatefulSparsifier(threshold=0.5, mode=Mode.SLOW, block=(1, 4))
    src.add_data("a", torch.randn(4, 6), mode=Mode.FAST)
    src.step()
    loaded = _weights_only_round_trip(src.state_dict())
    dst = StatefulSparsifier()
    dst.load_state_dict(loaded)
    assert dst.defaults == src.defaults and dst.defaults["mode"] is Mode.SLOW and dst.defaults["block"] == (1, 4)
    assert dst.data_groups == src.data_groups and dst.data_groups["a"]["mode"] is Mode.FAST
    assert dst.state["a"]["mode"] is src.state["a"]["mode"] and dst.state["a"]["shape"] == (4, 6)
    assert torch.equal(dst.get_mask("a"), src.get_mask("a")) and torch.equal(dst.get_data("a"), src.get_data("a"))
    norm = DataNormSparsifier(sparsity_level=0.5, sparse_block_shape=(2, 2))
    norm.add_data("w", torch.randn(6, 6))
    norm.step()
    again = DataNormSparsifier()
    again.load_state_dict(_weights_only_round_trip(norm.state_dict(include_data=False)), strict=False)
    assert again.data_groups == norm.data_groups and torch.equal(again.get_mask("w"), norm.get_mask("w"))


def test_data_scheduler_state_with_an_enum_and_tuples_in_its_config_loads_with_weights_only() -> None:
    def build() -> tuple[DataNormSparsifier, BlockScheduler]:
        sp = DataNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 2))
        sp.add_data("x", torch.randn(8, 8))
        config = BlockConfig(mode=Mode.SLOW, growth=(2, 1))
        return sp, BlockScheduler.from_config(config, data_sparsifier=sp)  # type: ignore[return-value]

    sp, scheduler = build()
    for _ in range(3):
        sp.step()
        scheduler.step()
    assert scheduler.mode is Mode.SLOW and scheduler.base_param == {"x": (1, 2)}
    loaded = _weights_only_round_trip(scheduler.state_dict())
    sp2, fresh = build()
    sp2.load_state_dict(_weights_only_round_trip(sp.state_dict()))
    fresh.load_state_dict(loaded)
    assert fresh.mode is Mode.SLOW and fresh.growth == (2, 1) and fresh.base_param == {"x": (1, 2)}
    assert _deep_equal(fresh.state_dict(), scheduler.state_dict())
    sp.step()
    scheduler.step()
    sp2.step()
    fresh.step()
    assert fresh.get_last_param() == scheduler.get_last_param() == {"x": (4, 2)}
    gamma_sp = DataNormSparsifier(sparsity_level=0.1)
    gamma_sp.add_data("x", torch.randn(4, 4))
    gamma = GammaDataScheduler(gamma_sp, gamma=2.0)
    gamma_sp.step()
    gamma.step()
    other = GammaDataScheduler(gamma_sp, gamma=3.0)
    other.load_state_dict(_weights_only_round_trip(gamma.state_dict()))
    assert other.state_dict() == gamma.state_dict()


def test_lightning_data_callbacks_state_loads_with_weights_only() -> None:
    pytest.importorskip("lightning")
    from prunekit.integrations.lightning import PostTrainingDataSparsity, TrainingAwareDataSparsity

    module = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))

    def callback() -> TrainingAwareDataSparsity:
        return TrainingAwareDataSparsity(DataNormSparsifier, {"sparsity_level": 0.5}, BlockScheduler, {"mode": Mode.SLOW})

    first = callback()
    trainer = types.SimpleNamespace(current_epoch=0)
    first.on_train_start(trainer, module)
    for epoch in range(3):
        trainer.current_epoch = epoch
        first.on_train_epoch_start(trainer, module)
        first.on_train_epoch_end(trainer, module)
    state = first.state_dict()
    loaded = _weights_only_round_trip(state)
    resumed = callback()
    resumed.load_state_dict(loaded)
    resumed.on_train_start(types.SimpleNamespace(current_epoch=3), module)
    assert resumed.history == first.history and resumed.history[2]["sparse_block_shape"]["0.weight"] == (1, 8)
    assert _deep_equal(resumed.data_scheduler.state_dict(), first.data_scheduler.state_dict())
    assert resumed.data_scheduler.mode is Mode.SLOW
    for name in first.data_sparsifier.data_groups:
        assert torch.equal(resumed.data_sparsifier.get_mask(name), first.data_sparsifier.get_mask(name)), name
    post = PostTrainingDataSparsity(DataNormSparsifier, {"sparsity_level": 0.5})
    post.load_state_dict(_weights_only_round_trip(post.state_dict()))
