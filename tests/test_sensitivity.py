"""Sensitivity analysis on a trained MLP (scikit-learn digits): the scan, the allocation, the config it writes."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch

import prunekit as pk
from prunekit.cli import main as cli_main
from prunekit.demo import MLP, accuracy, load_digits, train
from prunekit.layer_sensitivity import LayerSensitivity, SensitivityResult, sensitivity

pytest.importorskip("sklearn")

CONFIG = {"pruners": [{"name": "hidden", "op_types": ["Linear"], "excluded_op_names": ["^head$"], "target_sparsity": 0.5}]}


@pytest.fixture(scope="module")
def trained():
    data = load_digits(0)
    torch.manual_seed(0)
    model = MLP(hidden=64)
    train(model, data, steps=300, lr=3e-3, seed=0)
    return model, data


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, {n: m.training for n, m in model.named_modules()}


def test_scan_measures_each_layer_and_leaves_the_model_as_it_was(trained):
    model, data = trained
    model.train()
    weights, modes = snapshot(model)
    result = sensitivity(model, CONFIG, lambda m: accuracy(m, data), ratios=(0.5, 0.95, 0.99))
    assert [layer.name for layer in result.layers] == ["fc1", "fc2"]
    assert [layer.numel for layer in result.layers] == [64 * 64, 64 * 64]
    assert result.baseline == pytest.approx(accuracy(model, data))
    for layer in result.layers:
        assert layer.metrics[0.99] < layer.metrics[0.5] <= result.baseline + 1.0  # pruning one layer to 99% hurts
    after_weights, _ = snapshot(model)
    assert all(torch.equal(weights[k], after_weights[k]) for k in weights)
    model.train()  # accuracy() switched it to eval; the scan restores what it found, which was train
    weights2, modes2 = snapshot(model)
    result = sensitivity(model, CONFIG, lambda m: accuracy(m, data), ratios=(0.5,))
    assert {n: m.training for n, m in model.named_modules()} == modes2
    text = result.table()
    assert "baseline" in text and "fc1" in text and "0.5" in text


def test_a_failing_evaluation_leaves_the_weights_intact(trained):
    model, data = trained
    weights, _ = snapshot(model)
    calls = []

    def flaky(m):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("evaluation server went away")
        return accuracy(m, data)

    with pytest.raises(RuntimeError, match="went away"):
        sensitivity(model, CONFIG, flaky, ratios=(0.5, 0.9))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    pk.Pruning(model, CONFIG).close()  # no layer is left claimed by a scan's session


def synthetic(drops: dict[str, list[float]], numel: dict[str, int], ratios=(0.25, 0.5, 0.75, 0.9)) -> SensitivityResult:
    layers = [LayerSensitivity(n, "g", numel[n], {r: 100.0 - d for r, d in zip(ratios, ds)}) for n, ds in drops.items()]
    group = pk.load_config({"pruners": [{"name": "g", "target_sparsity": 0.5}]}).pruners[0]
    return SensitivityResult(100.0, ratios, layers, True, {"g": group})


def test_allocation_keeps_the_overall_target_and_favours_robust_layers():
    result = synthetic({"robust": [0, 0, 0.1, 0.2], "sensitive": [1, 5, 20, 40], "middle": [0.2, 1, 4, 9]},
                       {"robust": 1000, "sensitive": 3000, "middle": 2000})
    for target in (0.2, 0.5, 0.7):
        allocation = result.allocate(target)
        overall = sum(allocation[layer.name] * layer.numel for layer in result.layers) / 6000
        assert overall == pytest.approx(target, abs=1e-9)
        assert allocation["robust"] >= allocation["middle"] >= allocation["sensitive"]
        assert max(allocation.values()) <= 0.9
    with pytest.raises(ValueError, match="above what the measured ratios reach"):
        result.allocate(0.95)
    # a noisy curve (better at 0.75 than at 0.5) is made monotone before it is inverted
    noisy = synthetic({"a": [1, 3, 2, 4], "b": [1, 3, 2, 4]}, {"a": 10, "b": 10})
    assert noisy.allocate(0.6) == pytest.approx({"a": 0.6, "b": 0.6})


def test_written_config_prunes_to_the_overall_target(trained, tmp_path):
    model, data = trained
    result = sensitivity(model, CONFIG, lambda m: accuracy(m, data), ratios=(0.5, 0.8, 0.95))
    path = result.write_config(tmp_path / "per_layer.yaml", 0.8)
    text = path.read_text()
    assert text.startswith("# per-layer targets from prunekit sensitivity: overall 0.8")
    config = pk.load_config(path)
    assert config == result.to_config(0.8)
    assert [g.op_names for g in config.pruners] == [["^fc1$"], ["^fc2$"]]
    copy = MLP(hidden=64)
    copy.load_state_dict(model.state_dict())
    session = pk.Pruning(copy, path)
    session.prune_now()
    session.finalize()
    zeros = sum(int((w == 0).sum()) for w in (copy.fc1.weight, copy.fc2.weight))
    assert zeros / (2 * 64 * 64) == pytest.approx(0.8, abs=1e-3)


def test_gradient_criteria_need_a_backward_function_and_keep_the_gradients(trained):
    model, data = trained
    config = {"pruners": [{**CONFIG["pruners"][0], "criterion": "snip"}]}
    with pytest.raises(pk.PruningError, match="reads gradients; pass backward="):
        sensitivity(model, config, lambda m: accuracy(m, data))
    model.zero_grad(set_to_none=True)
    model.fc1.weight.grad = torch.full_like(model.fc1.weight, 7.0)

    def backward(m):
        torch.nn.functional.cross_entropy(m(data.x_train[:128]), data.y_train[:128]).backward()

    result = sensitivity(model, config, lambda m: accuracy(m, data), ratios=(0.5,), backward=backward)
    assert all(math.isfinite(layer.metrics[0.5]) for layer in result.layers)
    assert torch.equal(model.fc1.weight.grad, torch.full_like(model.fc1.weight, 7.0)) and model.fc2.weight.grad is None


@pytest.mark.parametrize("change,message", [({"pattern": "2:4"}, "has one ratio"), ({"type": "progressive"}, "set type basic")])
def test_what_cannot_be_scanned_is_refused(trained, change, message):
    model, data = trained
    with pytest.raises(pk.PruningError, match=message):
        sensitivity(model, {"pruners": [{**CONFIG["pruners"][0], **change}]}, lambda m: accuracy(m, data))


def test_command_line(trained, tmp_path, monkeypatch, capsys):
    model, _ = trained
    torch.save(model.state_dict(), tmp_path / "mlp.pt")
    (tmp_path / "sens_mod.py").write_text(textwrap.dedent(f"""
        import torch
        from prunekit.demo import MLP, accuracy, load_digits

        DATA = load_digits(0)

        def build():
            model = MLP(hidden=64)
            model.load_state_dict(torch.load({str(tmp_path / 'mlp.pt')!r}, weights_only=True))
            return model

        def acc(model):
            return accuracy(model, DATA)
    """))
    (tmp_path / "scan.yaml").write_text("pruners:\n  - {name: hidden, op_types: [Linear], excluded_op_names: ['^head$'], target_sparsity: 0.5}\n")
    monkeypatch.chdir(tmp_path)
    args = ["sensitivity", "scan.yaml", "--model", "sens_mod:build", "--eval", "sens_mod:acc", "--ratios", "0.5", "0.9",
            "--target", "0.7", "--out", "per_layer.yaml", "--quiet"] + (["--plot", "sens.png"] if _has_matplotlib() else [])
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "fc1" in out and "fc2" in out and "wrote per_layer.yaml" in out and "overall 0.7" in out
    assert (tmp_path / "sens.png").is_file() == _has_matplotlib()
    assert len(pk.load_config(tmp_path / "per_layer.yaml").pruners) == 2
    assert cli_main(args) == 1  # --out exists: not replaced without --force
    assert "--force" in capsys.readouterr().err
    assert cli_main(["sensitivity", "scan.yaml", "--model", "sens_mod:build"]) == 1
    assert "--eval MODULE:FUNCTION" in capsys.readouterr().err


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_non_finite_metrics_are_never_allocated_and_a_non_finite_baseline_is_refused(trained):
    nan_at_90 = synthetic({"a": [0.1, 0.1, 0.1, float("nan")], "b": [0.1, 0.1, 0.1, 0.2]}, {"a": 10, "b": 10})
    allocation = nan_at_90.allocate(0.8)
    assert allocation["a"] <= 0.75 + 1e-9 and (allocation["a"] + allocation["b"]) / 2 == pytest.approx(0.8)
    with pytest.raises(ValueError, match="above what the measured ratios reach"):
        nan_at_90.allocate(0.85)  # a at 0.75 (its last finite ratio) and b at 0.9 reach 0.825
    model, _ = trained
    with pytest.raises(ValueError, match="finite baseline"):
        sensitivity(model, CONFIG, lambda m: float("nan"))


def test_batch_norm_statistics_and_coupled_patterns(trained):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    x = torch.randn(32, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def backward(m):
        m.train()
        m(x).pow(2).mean().backward()  # moves the batch-norm running statistics

    config = {"pruners": [{"op_types": ["Linear"], "criterion": "snip", "target_sparsity": 0.5}]}
    sensitivity(model, config, lambda m: -float(m.eval()(x).detach().pow(2).mean()), ratios=(0.5,), backward=backward)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(pk.PruningError, match="cannot try"):
        sensitivity(model, {"pruners": [{"pattern": "channel", "target_sparsity": 0.5}]}, lambda m: 0.0)
