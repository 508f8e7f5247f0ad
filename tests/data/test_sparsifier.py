"""BaseDataSparsifier: holding data by reference, configs, masks, squash, state, pickling."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
import torch
from torch import nn

from prunekit.data import BaseDataSparsifier, DataNormSparsifier, UnknownDataError
from prunekit.data.masks import pack_mask, unpack_mask
from prunekit.errors import PruningError


class ThresholdSparsifier(BaseDataSparsifier):
    """Keeps |x| >= threshold; records its calls; has a subclass attribute."""

    def __init__(self, data_list: Any = None, **defaults: Any) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.tag = "custom"
        super().__init__(data_list, **defaults)

    def update_mask(self, name: str, data: torch.Tensor, threshold: float = 0.5, **config: Any) -> torch.Tensor:
        self.calls.append((name, {"threshold": threshold, **config}))
        return data.abs() >= threshold


def kinds() -> dict[str, Any]:
    torch.manual_seed(0)
    return {
        "tensor": torch.randn(6, 8),
        "parameter": nn.Parameter(torch.randn(6, 8)),
        "embedding": nn.Embedding(6, 8),
        "embedding_bag": nn.EmbeddingBag(6, 8, mode="sum"),
    }


def weight_of(data: Any) -> torch.Tensor:
    return data.weight if isinstance(data, nn.Module) else data


@pytest.mark.parametrize("kind", ["tensor", "parameter", "embedding", "embedding_bag"])
def test_data_is_held_by_reference_and_squash_reaches_the_users_tensor(kind: str) -> None:
    data = kinds()[kind]
    user_tensor = weight_of(data)
    before = user_tensor.detach().clone()
    sp = ThresholdSparsifier(threshold=0.5)
    returned = sp.add_data("x", data)
    assert returned is user_tensor and sp.get_data("x") is user_tensor
    sp.step()
    expected_mask = before.abs() >= 0.5
    assert torch.equal(sp.get_mask("x"), expected_mask) and sp.get_mask("x").dtype == torch.bool
    assert torch.equal(user_tensor.detach(), before), "step() must not touch the data"
    assert torch.equal(sp.get_data("x", return_original=False), torch.where(expected_mask, before, 0.0))
    sp.squash_mask()
    assert torch.equal(user_tensor.detach(), torch.where(expected_mask, before, 0.0))
    if kind == "embedding":
        rows = data(torch.tensor([0, 3]))
        assert torch.equal(rows.detach(), torch.where(expected_mask, before, 0.0)[[0, 3]])
    if kind == "embedding_bag":
        bag = data(torch.tensor([1, 2]), torch.tensor([0]))
        assert torch.allclose(bag.detach()[0], torch.where(expected_mask, before, 0.0)[[1, 2]].sum(0))


def test_mask_lives_on_the_data_device_and_is_bool() -> None:
    sp = ThresholdSparsifier()
    sp.add_data("x", torch.randn(3, 4, dtype=torch.float64))
    mask = sp.get_mask("x")
    assert mask.dtype == torch.bool and mask.device.type == "cpu" and mask.shape == (3, 4) and bool(mask.all())


def test_per_entry_config_over_defaults_and_update_mask_receives_it() -> None:
    sp = ThresholdSparsifier([("a", torch.randn(4)), ("b", torch.randn(4))], threshold=0.1, extra="d")
    sp.add_data("c", torch.randn(4), threshold=0.9)
    assert sp.data_groups == {
        "a": {"threshold": 0.1, "extra": "d"},
        "b": {"threshold": 0.1, "extra": "d"},
        "c": {"threshold": 0.9, "extra": "d"},
    }
    sp.step()
    assert sp.calls == [("a", {"threshold": 0.1, "extra": "d"}), ("b", {"threshold": 0.1, "extra": "d"}), ("c", {"threshold": 0.9, "extra": "d"})]
    sp.defaults["extra"] = "changed"
    assert sp.data_groups["a"]["extra"] == "d", "entries hold copies of the defaults"


def test_replacing_keeps_config_and_mask_and_checks_the_shape() -> None:
    sp = ThresholdSparsifier(threshold=0.5)
    first = torch.tensor([[1.0, 0.1], [0.2, 2.0]])
    sp.add_data("x", first, threshold=0.15)
    sp.step()
    mask = sp.get_mask("x")
    assert torch.equal(mask, torch.tensor([[True, False], [True, True]]))
    fresh = torch.tensor([[5.0, 6.0], [7.0, 8.0]])
    out = sp.add_data("x", fresh, extra=1)
    assert sp.data_groups["x"] == {"threshold": 0.15, "extra": 1}
    assert sp.get_mask("x") is mask, "reuse_mask=True keeps the very mask"
    assert torch.equal(out, torch.tensor([[5.0, 0.0], [7.0, 8.0]])) and out is not fresh
    assert torch.equal(fresh, torch.tensor([[5.0, 6.0], [7.0, 8.0]])), "add_data does not modify the new data"
    assert sp.get_data("x") is fresh
    with pytest.raises(ValueError, match=r"add_data\('x'\).*old shape \(2, 2\).*reuse_mask=False"):
        sp.add_data("x", torch.randn(3, 2))
    sp.add_data("x", torch.randn(3, 2), reuse_mask=False)
    assert sp.get_mask("x").shape == (3, 2) and bool(sp.get_mask("x").all())
    assert sp.data_groups["x"]["threshold"] == 0.15


def test_initial_mask_is_copied_and_not_stored_in_the_config() -> None:
    user_mask = torch.tensor([1, 0, 1, 1])
    sp = ThresholdSparsifier()
    out = sp.add_data("x", torch.ones(4), mask=user_mask)
    assert "mask" not in sp.data_groups["x"]
    assert torch.equal(out, torch.tensor([1.0, 0.0, 1.0, 1.0]))
    sp.get_mask("x").fill_(False)
    assert torch.equal(user_mask, torch.tensor([1, 0, 1, 1]))
    with pytest.raises(ValueError, match="mask= must be a tensor of the data's shape"):
        sp.add_data("y", torch.ones(4), mask=torch.ones(3))


def test_names_with_dots_and_unknown_names() -> None:
    sp = ThresholdSparsifier()
    sp.add_data("encoder.layer.0.weight", torch.randn(2, 2))
    sp.add_data("encoder_layer_0_weight", torch.randn(2, 2))
    assert set(sp.data_groups) == {"encoder.layer.0.weight", "encoder_layer_0_weight"}
    sp.step()
    with pytest.raises(UnknownDataError, match=r"no data named 'encoder.layer.0.weigth'; did you mean 'encoder.layer.0.weight'"):
        sp.get_mask("encoder.layer.0.weigth")
    with pytest.raises(ValueError):  # UnknownDataError is a ValueError, as in torch.ao
        sp.get_data("nope")
    with pytest.raises(TypeError, match="non-empty string"):
        sp.add_data("", torch.randn(2))


@pytest.mark.parametrize(
    "bad, message",
    [
        (nn.Linear(2, 2), "Linear modules are not data; pass a tensor such as module.weight"),
        ([1.0, 2.0], "expected a tensor, nn.Parameter, nn.Embedding or nn.EmbeddingBag, got list"),
        (torch.eye(3).to_sparse(), "pass data.to_dense"),
    ],
)
def test_unsupported_data_is_rejected_with_a_fix(bad: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        ThresholdSparsifier().add_data("x", bad)


def test_enable_mask_update_gates_step() -> None:
    sp = ThresholdSparsifier(threshold=0.5)
    sp.add_data("x", torch.tensor([0.1, 1.0]))
    sp.enable_mask_update = False
    sp.step()
    assert sp.calls == [] and bool(sp.get_mask("x").all())
    sp.enable_mask_update = True
    sp.step()
    assert torch.equal(sp.get_mask("x"), torch.tensor([False, True]))


def test_squash_selected_names_then_step_fails_loudly() -> None:
    sp = ThresholdSparsifier(threshold=0.5)
    a, b = torch.tensor([0.1, 1.0]), torch.tensor([0.2, 3.0])
    sp.add_data("a", a)
    sp.add_data("b", b)
    sp.step()
    sp.squash_mask(names=["a"])
    assert torch.equal(a, torch.tensor([0.0, 1.0])) and torch.equal(b, torch.tensor([0.2, 3.0]))
    assert sp.squashed == ["a"]
    with pytest.raises(PruningError, match=r"'a' was squashed by squash_mask\(\).*add_data\(name, tensor\)"):
        sp.step()
    assert torch.equal(sp.get_mask("b"), torch.tensor([False, True])), "a failed step changes nothing"
    with pytest.raises(PruningError, match="original values are gone"):
        sp.get_data("a")
    assert sp.get_data("a", return_original=False) is a
    with pytest.raises(PruningError, match="already squashed"):
        sp.squash_mask(names="a")
    sp.squash_mask(leave_parametrized=False)  # the rest: 'b', without applying its mask
    assert torch.equal(b, torch.tensor([0.2, 3.0])) and sp.get_data("b") is b
    sp.add_data("a", torch.tensor([0.7, 0.01]))  # attaching again makes 'a' steppable
    sp.add_data("b", b)
    sp.step()
    assert torch.equal(sp.get_mask("a"), torch.tensor([True, False]))


def test_update_mask_returning_a_wrong_shape_is_reported() -> None:
    class Bad(BaseDataSparsifier):
        def update_mask(self, name: str, data: torch.Tensor, **config: Any) -> torch.Tensor:
            return torch.ones(1, dtype=torch.bool)

    sp = Bad()
    sp.add_data("x", torch.randn(3))
    with pytest.raises(PruningError, match=r"returned a mask of shape \(1,\) for data of shape \(3,\)"):
        sp.step()


def test_step_count_counts_outermost_calls_even_when_step_is_overridden() -> None:
    class Overriding(ThresholdSparsifier):
        def step(self) -> None:
            super().step()

    sp = Overriding()
    sp.add_data("x", torch.randn(3))
    sp.step()
    sp.step()
    assert sp._step_count == 2
    assert len(sp.calls) == 2


def test_state_dict_is_a_compact_snapshot() -> None:
    sp = DataNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 4))
    data = torch.randn(16, 32)
    sp.add_data("w", data)
    sp.step()
    sd = sp.state_dict()
    packed = sd["state"]["w"]["mask"]
    assert packed["bits"].dtype == torch.uint8 and packed["bits"].numel() == 16 * 32 // 8
    assert torch.equal(unpack_mask(packed), sp.get_mask("w"))
    assert torch.equal(sd["data"]["w"], data) and sd["data"]["w"].data_ptr() != data.data_ptr()
    snapshot = copy.deepcopy(sd)
    sp.data_groups["w"]["sparsity_level"] = 0.9
    sp.get_mask("w").fill_(True)
    data.zero_()
    assert sd["data_groups"] == snapshot["data_groups"]
    assert torch.equal(sd["state"]["w"]["mask"]["bits"], snapshot["state"]["w"]["mask"]["bits"])
    assert torch.equal(sd["data"]["w"], snapshot["data"]["w"])
    assert "data" not in sp.state_dict(include_data=False)


def test_pack_unpack_round_trip_odd_sizes() -> None:
    for shape in [(0,), (1,), (7,), (3, 5), (2, 3, 4)]:
        mask = torch.rand(shape) > 0.5
        assert torch.equal(unpack_mask(pack_mask(mask)), mask)


def _deep_equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_deep_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_strict_load_restores_exactly_and_never_mutates_or_aliases_its_input() -> None:
    torch.manual_seed(1)
    src = DataNormSparsifier(sparsity_level=0.5)
    src.add_data("a", torch.randn(8, 8))
    src.add_data("b.c", torch.randn(4, 4), sparsity_level=0.25)
    src.step()
    src.squash_mask(names=["b.c"])
    src.enable_mask_update = False
    sd = src.state_dict()
    frozen = copy.deepcopy(sd)
    dst = DataNormSparsifier(sparsity_level=0.1)
    dst.add_data("other", torch.randn(2, 4))
    result = dst.load_state_dict(sd)
    assert _deep_equal(sd, frozen), "load_state_dict mutated its input"
    assert result.loaded == ["a", "b.c"] and result.dropped == ["other"] and result.replaced == []
    assert list(dst.data_groups) == ["a", "b.c"] and dst.data_groups == src.data_groups
    for name in ("a", "b.c"):
        assert torch.equal(dst.get_mask(name), src.get_mask(name))
        assert torch.equal(dst.get_data(name, return_original=False), src.get_data(name, return_original=False))
    assert dst.squashed == ["b.c"] and dst.enable_mask_update is False and dst._step_count == src._step_count
    dst.get_mask("a").fill_(False)
    dst.get_data("a").fill_(7.0)
    assert _deep_equal(sd, frozen), "the loaded sparsifier aliases the state dict"


def test_non_strict_load_with_colliding_names_follows_the_documented_rule() -> None:
    saved = DataNormSparsifier(sparsity_level=0.5)
    saved.add_data("shared", torch.arange(1.0, 17.0).view(4, 4))
    saved.add_data("only_saved", torch.randn(4, 4))
    saved.step()
    sd = saved.state_dict()
    live = torch.zeros(4, 4)
    current = DataNormSparsifier(sparsity_level=0.9)
    current.add_data("shared", live)
    current.add_data("only_current", torch.randn(4, 4))
    current.step()
    result = current.load_state_dict(sd, strict=False)
    assert result.kept == ["only_current"] and result.replaced == ["shared"]
    assert sorted(result.loaded) == ["only_saved", "shared"] and result.dropped == []
    assert set(current.data_groups) == {"shared", "only_saved", "only_current"}
    assert current.data_groups["shared"]["sparsity_level"] == 0.5, "the saved config wins"
    assert torch.equal(current.get_mask("shared"), saved.get_mask("shared")), "the saved mask wins"
    assert current.get_data("shared") is live, "the attached tensor stays attached"
    assert torch.equal(live, torch.arange(1.0, 17.0).view(4, 4)), "saved data is copied into it"
    assert current.data_groups["only_current"]["sparsity_level"] == 0.9


def test_load_without_data_keeps_attached_tensors_or_leaves_entries_detached() -> None:
    src = DataNormSparsifier()
    src.add_data("w", torch.randn(4, 8))
    src.step()
    sd = src.state_dict(include_data=False)
    fresh = DataNormSparsifier()
    result = fresh.load_state_dict(sd)
    assert result.detached == ["w"]
    with pytest.raises(PruningError, match=r"no tensor attached.*add_data\('w', tensor\)"):
        fresh.step()
    tensor = torch.randn(4, 8)
    fresh.add_data("w", tensor)
    assert torch.equal(fresh.get_mask("w"), src.get_mask("w")), "add_data reuses the loaded mask"
    fresh.step()
    attached = DataNormSparsifier()
    mine = torch.randn(4, 8)
    attached.add_data("w", mine)
    assert attached.load_state_dict(sd).detached == []
    assert attached.get_data("w") is mine


def test_load_reports_every_problem_at_once() -> None:
    src = DataNormSparsifier()
    src.add_data("a", torch.randn(4, 4))
    src.add_data("b", torch.randn(4, 4))
    sd = src.state_dict()
    broken = copy.deepcopy(sd)
    del broken["state"]["a"]
    broken["data"]["b"] = torch.randn(3, 3)
    broken["state"]["ghost"] = broken["state"]["b"]
    target = DataNormSparsifier()
    with pytest.raises(ValueError) as info:
        target.load_state_dict(broken)
    text = str(info.value)
    assert "state['a']: missing" in text and "data['b']: expected a tensor of the mask's shape (4, 4), got (3, 3)" in text
    assert "data_groups['ghost']: missing" in text
    assert target.data_groups == {}, "nothing changes when the load fails"
    wrong_shape = DataNormSparsifier()
    wrong_shape.add_data("a", torch.randn(2, 2))
    with pytest.raises(ValueError, match=r"does not fit the tensor attached here \(2, 2\)"):
        wrong_shape.load_state_dict(sd)


def test_loads_a_dense_mask_as_torch_ao_saved_it() -> None:
    src = DataNormSparsifier()
    src.add_data("a", torch.randn(4, 4))
    src.step()
    sd = src.state_dict()
    sd["state"]["a"]["mask"] = src.get_mask("a").float().to_sparse_coo()
    dst = DataNormSparsifier()
    dst.load_state_dict(sd)
    assert torch.equal(dst.get_mask("a"), src.get_mask("a"))


@pytest.mark.parametrize("roundtrip", [lambda o: pickle.loads(pickle.dumps(o)), copy.deepcopy], ids=["pickle", "deepcopy"])
def test_pickle_and_deepcopy_keep_every_flag_and_subclass_attribute(roundtrip: Any) -> None:
    import prunekit.schedulers.data as data_schedulers

    sp = ThresholdSparsifier(threshold=0.5)
    sp.add_data("a.b", torch.tensor([0.1, 2.0, 0.3]))
    sp.add_data("c", torch.tensor([1.0, 0.0]))
    scheduler = data_schedulers.LinearDataScheduler(sp, target=0.9, end_step=3, schedule_param="threshold")
    sp.step()
    scheduler.step()
    sp.squash_mask(names=["c"])
    sp.enable_mask_update = False
    sp.tag = "changed"
    clone = roundtrip(sp)
    assert type(clone) is ThresholdSparsifier and clone.tag == "changed" and clone.calls == sp.calls
    assert clone.enable_mask_update is False and clone._step_count == sp._step_count == 1
    assert clone.squashed == ["c"] and clone.data_groups == sp.data_groups and clone.defaults == sp.defaults
    assert torch.equal(clone.get_mask("a.b"), sp.get_mask("a.b"))
    clone.enable_mask_update = True
    clone.add_data("c", torch.tensor([1.0, 0.0]))
    clone.step()
    assert clone._step_count == 2
    both = roundtrip((sp, scheduler))
    assert both[1].data_sparsifier is both[0] and both[1].last_epoch == 1
