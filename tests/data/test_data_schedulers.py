"""Data schedulers: torch.ao BaseDataScheduler semantics, the built-ins, the registry, state."""

from __future__ import annotations

import copy
import math
import pickle
import warnings
from typing import Any, Mapping

import pytest
import torch

import prunekit as pk
import prunekit.schedulers.data as ds
from prunekit.data import DataNormSparsifier, DataSparsityConfig, build_data_sparsity
from prunekit.errors import ConfigError, PruningError
from prunekit.schedulers.data import (
    AGPDataScheduler,
    BaseDataScheduler,
    DataSchedulerConfig,
    GammaDataScheduler,
    LambdaDataScheduler,
    LinearDataScheduler,
    StepDataScheduler,
)

DATA_SCHEDULERS = ["gamma", "step", "lambda", "linear", "agp"]


def sparsifier(level: float = 0.1, names: tuple[str, ...] = ("a", "b")) -> DataNormSparsifier:
    sp = DataNormSparsifier(sparsity_level=level, sparse_block_shape=(1, 4))
    for name in names:
        sp.add_data(name, torch.randn(8, 16))
    return sp


def levels(sp: DataNormSparsifier) -> dict[str, float]:
    return {name: config["sparsity_level"] for name, config in sp.data_groups.items()}


class ReadmeGammaScheduler(BaseDataScheduler):
    """The custom scheduler of torch.ao's data scheduler README, in this test's own words."""

    def __init__(self, data_sparsifier: Any, gamma: float, threshold_sl: float) -> None:
        super().__init__(data_sparsifier, "sparsity_level")
        self.gamma = gamma
        self.threshold_sl = threshold_sl

    def get_schedule_param(self) -> dict[str, float]:
        groups = self.data_sparsifier.data_groups
        if self.last_epoch > 0:
            return {n: min(self.threshold_sl, c["sparsity_level"] * self.gamma) for n, c in groups.items()}
        return {n: 0.0 for n in groups}


@pytest.mark.parametrize("scheduler", ["readme", "gamma"])
def test_the_readme_loop_runs_as_written_and_reaches_the_threshold(scheduler: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data_sparsifier = DataNormSparsifier(sparsity_level=0.1, sparse_block_shape=(1, 4))
    if scheduler == "readme":
        data_scheduler: BaseDataScheduler = ReadmeGammaScheduler(data_sparsifier, gamma=2.0, threshold_sl=0.8)
    else:
        data_scheduler = pk.get_scheduler({"type": "gamma", "gamma": 2.0, "threshold_sl": 0.8}, data_sparsifier=data_sparsifier)
    dataset = [(torch.randn(8, 16), torch.randint(0, 2, (8,))) for _ in range(4)]
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right order raises no warning
        for epoch in range(6):
            for input, target in dataset:
                input = data_sparsifier.add_data(name="train_data", data=input)
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(input), target)
                loss.backward()
                optimizer.step()
                data_sparsifier.step()
            seen.append(data_sparsifier.data_groups["train_data"]["sparsity_level"])
            data_scheduler.step()
    assert seen == [0.1, 0.2, 0.4, 0.8, 0.8, 0.8]
    assert data_scheduler.get_last_param() == {"train_data": 0.8}
    zeros = 1.0 - data_sparsifier.get_mask("train_data").float().mean().item()
    assert zeros == round(0.8 * 32) / 32


def test_rejects_objects_that_are_not_data_sparsifiers() -> None:
    from torch.ao.pruning import WeightNormSparsifier

    with pytest.raises(TypeError, match="WeightNormSparsifier is not a data sparsifier; pass an instance of a BaseDataSparsifier"):
        GammaDataScheduler(WeightNormSparsifier(), gamma=2.0)
    with pytest.raises(TypeError, match="dict is not a data sparsifier"):
        GammaDataScheduler({}, gamma=2.0)  # type: ignore[arg-type]


def test_base_param_is_captured_and_step_zero_happens_in_the_constructor() -> None:
    sp = sparsifier(0.1)
    sp.data_groups["b"]["sparsity_level"] = 0.2
    sched = GammaDataScheduler(sp, gamma=3.0)
    assert sched.base_param == {"a": 0.1, "b": 0.2} and sched.last_epoch == 0 and sched._step_count == 1
    assert levels(sp) == {"a": 0.1, "b": 0.2} and sched.get_last_param() == {"a": 0.1, "b": 0.2}
    assert sp.enable_mask_update is True


def test_schedule_param_must_exist_in_every_group() -> None:
    with pytest.raises(KeyError, match="data 'a' has no config key 'sparsity'.*sparse_block_shape, sparsity_level"):
        GammaDataScheduler(sparsifier(), gamma=2.0, schedule_param="sparsity")


def test_warns_once_with_the_fix_when_stepped_before_the_sparsifier() -> None:
    sp = sparsifier()
    sched = GammaDataScheduler(sp, gamma=2.0)
    with pytest.warns(UserWarning, match=r"called before data_sparsifier.step\(\).*Call data_sparsifier.step\(\) first"):
        sched.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched.step()
        sp.step()
        sched.step()


def test_no_warning_when_the_sparsifier_steps_first() -> None:
    sp = sparsifier()
    sched = GammaDataScheduler(sp, gamma=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            sp.step()
            sched.step()
    assert sp._step_count == 3 and sched._step_count == 4


def test_enable_mask_update_is_switched_back_on() -> None:
    sp = sparsifier()
    sched = GammaDataScheduler(sp, gamma=2.0)
    sp.enable_mask_update = False
    sp.step()
    sched.step()
    assert sp.enable_mask_update is True


def test_get_schedule_param_unknown_names_and_bad_types() -> None:
    class Typo(BaseDataScheduler):
        def get_schedule_param(self) -> Mapping[str, Any]:
            return {"aa": 0.5} if self.last_epoch else {}

    class NotAMapping(BaseDataScheduler):
        def get_schedule_param(self) -> Any:
            return [0.5]

    sp = sparsifier()
    sched = Typo(sp, "sparsity_level")
    sp.step()
    with pytest.raises(PruningError, match=r"returned values for 'aa'.*did you mean 'a'"):
        sched.step()
    with pytest.raises(TypeError, match="must return a mapping of data name to value, got list"):
        NotAMapping(sp, "sparsity_level")


def test_names_left_out_keep_their_value_and_last_param_reports_all() -> None:
    class OnlyA(BaseDataScheduler):
        def get_schedule_param(self) -> dict[str, float]:
            return {"a": 0.5 + 0.1 * self.last_epoch}

    sp = sparsifier(0.1)
    sched = OnlyA(sp, "sparsity_level")
    sp.step()
    sched.step()
    assert sched.get_last_param() == {"a": pytest.approx(0.6), "b": 0.1}


def test_verbose_prints_each_value(capsys: pytest.CaptureFixture[str]) -> None:
    sp = sparsifier(0.1, names=("emb.weight",))
    sched = GammaDataScheduler(sp, gamma=2.0, verbose=True)
    sp.step()
    sched.step()
    out = capsys.readouterr().out.splitlines()
    assert out == ["Adjusting sparsity_level for group emb.weight to 0.1", "Adjusting sparsity_level for group emb.weight to 0.2"]


def test_data_added_later_counts_from_the_epoch_it_joined() -> None:
    sp = sparsifier(0.1, names=("early",))
    sched = GammaDataScheduler(sp, gamma=2.0)
    for _ in range(2):
        sp.step()
        sched.step()
    sp.add_data("late", torch.randn(4, 4), sparsity_level=0.05)
    sp.step()
    sched.step()
    assert sched.base_param == {"early": 0.1, "late": 0.05} and sched.base_epoch == {"early": 0, "late": 2}
    assert levels(sp) == {"early": pytest.approx(0.8), "late": pytest.approx(0.1)}


EXPECTED = {
    "gamma": lambda base, t: min(0.8, base * 2.0**t),
    "step": lambda base, t: min(0.8, base * 2.0 ** (t // 2)),
    "lambda": lambda base, t: base * (1.0 + t),
    "linear": lambda base, t: base + (0.7 - base) * min(max((t - 1) / 4, 0.0), 1.0),
    "agp": lambda base, t: base + (0.7 - base) * (1 - (1 - min(max((t - 1) / 4, 0.0), 1.0)) ** 3),
}
CONFIGS = {
    "gamma": {"gamma": 2.0, "threshold_sl": 0.8},
    "step": {"step_size": 2, "gamma": 2.0, "threshold_sl": 0.8},
    "lambda": {},
    "linear": {"target": 0.7, "start_step": 1, "end_step": 5},
    "agp": {"target": 0.7, "start_step": 1, "end_step": 5},
}


@pytest.mark.parametrize("name", DATA_SCHEDULERS)
def test_every_builtin_follows_its_formula_and_is_built_by_get_scheduler(name: str) -> None:
    sp = sparsifier(0.1, names=("a",))
    sp.data_groups["a"]["sparsity_level"] = 0.05
    context = {"param_lambda": lambda t: 1.0 + t} if name == "lambda" else {}
    sched = pk.get_scheduler({"type": name, **CONFIGS[name]}, data_sparsifier=sp, **context)
    assert type(sched) is pk.SCHEDULERS.get(name)
    got = []
    for _ in range(8):
        got.append(sp.data_groups["a"]["sparsity_level"])
        sp.step()
        sched.step()
    assert got == pytest.approx([EXPECTED[name](0.05, t) for t in range(8)])
    assert sched.get_last_param()["a"] == pytest.approx(EXPECTED[name](0.05, 8))


def test_data_scheduler_names_do_not_collide_with_weight_schedulers() -> None:
    for name in DATA_SCHEDULERS:
        assert issubclass(pk.SCHEDULERS.get(name), BaseDataScheduler)
        assert issubclass(pk.SCHEDULERS.config_of(name), DataSchedulerConfig)
    for name in ("oneshot", "one_shot", "iterative", "gradual"):
        if name in pk.SCHEDULERS:
            assert not issubclass(pk.SCHEDULERS.get(name), BaseDataScheduler)
    descriptions = dict(pk.list_schedulers())
    assert all(descriptions[n].startswith("Data:") for n in DATA_SCHEDULERS)


@pytest.mark.parametrize(
    "config, text",
    [
        ({"type": "gamma", "gamma": 0}, "gamma: must be > 0.0"),
        ({"type": "gamma", "gamma": 2, "threshold_sl": 1.5}, "threshold_sl 1.5 is not a sparsity level"),
        ({"type": "step", "gamma": 2}, "required key 'step_size' is missing"),
        ({"type": "linear", "target": 0.5, "start_step": 4, "end_step": 4}, "end_step (4) must come after start_step (4)"),
        ({"type": "agp", "target": 2.0, "end_step": 4}, "target 2.0 is not a sparsity level"),
        ({"type": "gamma", "gamma": 2, "gama": 3}, "unknown key 'gama'"),
    ],
)
def test_parameters_are_validated(config: dict[str, Any], text: str) -> None:
    with pytest.raises(ConfigError) as info:
        pk.get_scheduler(config, data_sparsifier=sparsifier())
    assert text in str(info.value)


def test_code_constructors_validate_with_the_same_models() -> None:
    with pytest.raises(ConfigError, match=r"GammaDataScheduler.gamma: must be > 0.0"):
        GammaDataScheduler(sparsifier(), gamma=-1.0)
    with pytest.raises(ConfigError, match="end_step"):
        LinearDataScheduler(sparsifier(), target=0.5, end_step=0)


def test_get_scheduler_needs_the_sparsifier_and_the_lambda_function() -> None:
    with pytest.raises(TypeError, match=r"data scheduler: build it with get_scheduler\(config, data_sparsifier=sparsifier\)"):
        pk.get_scheduler({"type": "gamma", "gamma": 2.0})
    with pytest.raises(TypeError, match="the lambda data scheduler needs a Python function"):
        pk.get_scheduler({"type": "lambda"}, data_sparsifier=sparsifier())
    with pytest.raises(TypeError, match="takes no 'max_sparsity_per_op'"):
        pk.get_scheduler({"type": "gamma", "gamma": 2.0}, data_sparsifier=sparsifier(), max_sparsity_per_op=0.9)
    with pytest.raises(TypeError, match="not callable"):
        LambdaDataScheduler(sparsifier(), param_lambda=0.5)  # type: ignore[arg-type]


def test_lambda_per_name_functions() -> None:
    sp = sparsifier(0.1)
    sched = LambdaDataScheduler(sp, param_lambda={"a": lambda t: 2.0**t, "b": lambda t: 1.0})
    sp.step()
    sched.step()
    assert levels(sp) == {"a": pytest.approx(0.2), "b": pytest.approx(0.1)}
    with pytest.raises(KeyError, match="no function for data 'a'"):
        LambdaDataScheduler(sparsifier(0.1), param_lambda={"b": lambda t: 1.0})


def test_gamma_from_a_zero_base_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"starts at sparsity_level=0.*linear or agp"):
        GammaDataScheduler(sparsifier(0.0), gamma=2.0)


def test_state_dict_excludes_the_sparsifier_and_resumes_exactly() -> None:
    torch.manual_seed(0)
    sp = sparsifier(0.1)
    sched = StepDataScheduler(sp, step_size=2, gamma=2.0, threshold_sl=0.9)
    for _ in range(3):
        sp.step()
        sched.step()
    sd = sched.state_dict()
    assert "data_sparsifier" not in sd and sd["last_epoch"] == 3 and sd["base_param"] == {"a": 0.1, "b": 0.1}
    frozen = copy.deepcopy(sd)
    sp_sd = sp.state_dict()
    reference = [levels(sp)]
    for _ in range(4):
        sp.step()
        sched.step()
        reference.append(levels(sp))
    fresh_sp = sparsifier(0.5)
    fresh_sp.load_state_dict(sp_sd)
    resumed = StepDataScheduler(fresh_sp, step_size=2, gamma=2.0, threshold_sl=0.9)
    resumed.load_state_dict(sd)
    assert sd == frozen
    fresh_sp.load_state_dict(sp_sd)  # the constructor's step 0 wrote the bases; restore the saved levels
    got = [levels(fresh_sp)]
    for _ in range(4):
        fresh_sp.step()
        resumed.step()
        got.append(levels(fresh_sp))
    assert got == reference
    with pytest.raises(ValueError, match="'data_sparsifier' cannot be loaded"):
        resumed.load_state_dict({"data_sparsifier": fresh_sp})


def test_lambda_state_dict_leaves_out_the_function() -> None:
    sched = LambdaDataScheduler(sparsifier(), param_lambda=lambda t: 1.0)
    sd = sched.state_dict()
    assert "param_lambda" not in sd
    pickle.dumps(sd)


def test_resume_with_last_epoch() -> None:
    sp = sparsifier(0.1, names=("a",))
    sched = AGPDataScheduler(sp, target=0.5, end_step=4, last_epoch=1)
    assert sched.last_epoch == 2
    assert levels(sp)["a"] == pytest.approx(0.1 + 0.4 * (1 - 0.5**3))


def test_a_custom_scheduler_registered_in_user_code_works_like_a_builtin() -> None:
    class HalvingConfig(DataSchedulerConfig):
        """``type: test_halving``."""

        type: str = "test_halving"
        floor: float = 0.0

    @pk.register_scheduler("test_halving", config=HalvingConfig)
    class HalvingScheduler(ds.ClosedFormDataScheduler):
        """Data: halve every step down to a floor."""

        def __init__(self, data_sparsifier: Any, floor: float = 0.0, schedule_param: str = "sparsity_level", last_epoch: int = -1, verbose: bool = False) -> None:
            self.floor = floor
            super().__init__(data_sparsifier, schedule_param, last_epoch, verbose)

        def value_at(self, name: str, base: Any, t: int) -> float:
            return max(self.floor, base * 0.5**t)

    try:
        sp = sparsifier(0.8, names=("a",))
        sched = pk.get_scheduler({"type": "test_halving", "floor": 0.3}, data_sparsifier=sp)
        sp.step()
        sched.step()
        sp.step()
        sched.step()
        assert levels(sp) == {"a": 0.3}
        model = torch.nn.Sequential(torch.nn.Embedding(10, 8))
        _, built = build_data_sparsity(
            DataSparsityConfig.model_validate({"module_types": ["Embedding"], "scheduler": {"type": "test_halving", "floor": 0.1}}),
            model,
        )
        assert isinstance(built, HalvingScheduler) and built.floor == 0.1
        with pytest.raises(ConfigError, match="unknown key 'flor'"):
            pk.get_scheduler({"type": "test_halving", "flor": 0.3}, data_sparsifier=sp)
    finally:
        pk.SCHEDULERS.unregister("test_halving")


def test_a_readme_style_scheduler_without_base_fields_is_built_from_a_config() -> None:
    class ReadmeConfig(DataSchedulerConfig):
        type: str = "test_readme_gamma"
        gamma: float
        threshold_sl: float

    pk.register_scheduler("test_readme_gamma", config=ReadmeConfig)(ReadmeGammaScheduler)
    try:
        sched = pk.get_scheduler({"type": "test_readme_gamma", "gamma": 2.0, "threshold_sl": 0.5}, data_sparsifier=sparsifier())
        assert isinstance(sched, ReadmeGammaScheduler) and sched.gamma == 2.0
        with pytest.raises(TypeError, match="takes no 'verbose'"):
            pk.get_scheduler({"type": "test_readme_gamma", "gamma": 2.0, "threshold_sl": 0.5, "verbose": True}, data_sparsifier=sparsifier())
    finally:
        pk.SCHEDULERS.unregister("test_readme_gamma")


def test_pickling_a_sparsifier_that_has_a_scheduler() -> None:
    sp = sparsifier()
    sched = GammaDataScheduler(sp, gamma=2.0)
    sp.step()
    sched.step()
    sp2, sched2 = pickle.loads(pickle.dumps((sp, sched)))
    sp2.step()
    sched2.step()
    assert sched2.data_sparsifier is sp2 and levels(sp2) == {"a": pytest.approx(0.4), "b": pytest.approx(0.4)}
    assert math.isclose(sched.get_last_param()["a"], 0.2)
