"""`prunekit report` on Hugging Face model folders and Trainer checkpoints, with labelled totals."""

from __future__ import annotations

import pytest
import torch

import prunekit as pk
from prunekit.cli import main

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")


def pruned_bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    session = pk.Pruning(model, {"pruners": [{"name": "ffn", "op_names": [r"\.(intermediate|output)\.dense$"],
                                              "excluded_op_names": ["attention"], "target_sparsity": 0.75,
                                              "scope": "global"}]})
    session.prune_now()
    return model, session


def report(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["report", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_model_folder_is_read_from_its_safetensors(tmp_path, capsys) -> None:
    model, _ = pruned_bert()
    model.save_pretrained(tmp_path / "model")
    code, out, err = report(capsys, str(tmp_path / "model"))
    assert code == 0, err
    assert "bert.encoder.layer.0.intermediate.dense" in out
    assert "all weight matrices (embeddings and heads included)" in out and "pruned layers" not in out


def test_sharded_weights_are_read_from_every_shard(tmp_path, capsys) -> None:
    model, _ = pruned_bert()
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    code, out, err = report(capsys, str(tmp_path / "sharded"))
    assert code == 0, err
    names = {line.split()[0] for line in out.split("\n\n")[0].splitlines()[2:]}
    assert {n.removesuffix(".weight") for n, t in model.state_dict().items() if n.endswith("weight") and t.dim() >= 2} == names


def test_a_trainer_checkpoint_folder_fills_the_pruner_columns_and_both_totals(tmp_path, capsys) -> None:
    model, session = pruned_bert()
    checkpoint = tmp_path / "checkpoint-10"
    model.save_pretrained(checkpoint)
    torch.save(session.state_dict(), checkpoint / "prunekit_pruning.pt")  # what the Trainer callback writes
    code, out, err = report(capsys, str(checkpoint))
    assert code == 0, err
    assert "ffn (0.750)" in out
    pruned = [line for line in out.splitlines() if line.startswith("pruned layers:")]
    assert pruned == ["pruned layers: 4, 8,192 weights, 75.00% zero"]
    total_line = next(line for line in out.splitlines() if line.startswith("all weight matrices"))
    assert "75.00%" not in total_line  # embeddings dilute the overall figure: both are shown, labelled


def test_the_pruning_state_alone_says_where_the_weights_are_expected(tmp_path, capsys) -> None:
    _, session = pruned_bert()
    torch.save(session.state_dict(), tmp_path / "prunekit_pruning.pt")
    code, _, err = report(capsys, str(tmp_path / "prunekit_pruning.pt"))
    assert code == 1
    assert "this is prunekit's pruning state (step 1, groups ffn), not the model's weights" in err
    assert f"prunekit report {tmp_path}" in err


def test_a_folder_without_weights_lists_what_it_holds(tmp_path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("x")
    code, _, err = report(capsys, str(tmp_path))
    assert code == 1 and "no model weights in this folder" in err and "notes.txt" in err


def test_a_global_scope_report_marks_the_target_as_the_groups() -> None:
    _, session = pruned_bert()
    text = str(session.report())
    assert "0.7500 (group, global)" in text and "total over the 4 pruned layers" in text
    shares = {row.sparsity for row in session.report()}
    assert len(shares) > 1  # each layer's share differs; the group's is 0.75


def test_validate_takes_a_hugging_face_model_folder_as_the_model(tmp_path, capsys) -> None:
    model, session = pruned_bert()
    session.close()
    model.save_pretrained(tmp_path / "bert")
    config = tmp_path / "ffn.yaml"
    config.write_text("pruners:\n  - op_names: ['intermediate\\.dense$']\n    pattern: 4x1\n    target_sparsity: 0.8\n")
    assert main(["validate", str(config), "--model", str(tmp_path / "bert")]) == 0
    out = capsys.readouterr().out
    assert "bert.encoder.layer.1.intermediate.dense" in out and "2 layer(s)" in out
    assert main(["validate", str(config), "--model", str(tmp_path)]) == 1
    assert "a folder without config.json is not a Hugging Face model folder" in capsys.readouterr().err


def test_the_console_script_finds_a_factory_module_in_the_current_directory(tmp_path) -> None:
    import os
    import shutil
    import subprocess
    import sys

    script = shutil.which("prunekit", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the prunekit console script is not installed next to this Python")
    (tmp_path / "my_models.py").write_text("from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Linear(8, 8))\n")
    (tmp_path / "c.yaml").write_text("pruners:\n  - op_types: [Linear]\n    target_sparsity: 0.5\n")
    done = subprocess.run([script, "validate", "c.yaml", "--model", "my_models:build"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr
    assert "1 layer(s)" in done.stdout


def test_global_scope_warns_once_when_it_drives_layers_to_the_per_layer_cap() -> None:
    import warnings

    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 8))
    with torch.no_grad():
        model[0].weight.mul_(1e-3)  # layer 0 scores lowest: global scope empties it first
    config = {"pruners": [{"op_types": ["Linear"], "scope": "global", "target_sparsity": 0.8, "max_sparsity_per_op": 0.85,
                           "scheduler": {"type": "iterative", "start_step": 0, "end_step": 2, "frequency": 1}}]}
    session = pk.Pruning(model, config)
    with pytest.warns(UserWarning, match=r"1 layer\(s\) reached max_sparsity_per_op 0.85: 0\. .*scope: local"):
        for _ in range(3):
            session.on_before_optimizer_step()
            session.on_after_optimizer_step()
    assert session.report().row("0").sparsity == pytest.approx(0.85, abs=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        session.prune_now()  # the same layer at the cap again: no second warning


def test_report_plot_draws_every_layer_with_the_legend_clear_of_the_bars(tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    from prunekit.checkpoint_report import analyse, load_weights
    from prunekit.plotting import layer_sparsity_figure

    model, session = pruned_bert()
    checkpoint = tmp_path / "checkpoint-10"
    model.save_pretrained(checkpoint)
    torch.save(session.state_dict(), checkpoint / "prunekit_pruning.pt")
    code, out, err = report(capsys, str(checkpoint), "--plot", str(tmp_path / "plots" / "layers.png"))
    assert code == 0, err
    assert (tmp_path / "plots" / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "wrote" in out
    tensors, pruning = load_weights(checkpoint)
    rows = analyse(tensors)
    pruned = {name for group in pruning["groups"].values() for name in group["layers"]}
    fig = layer_sparsity_figure(rows, pruned)
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend, axes_box = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.y0 >= axes_box.y1 - 1  # above the plotting area: it cannot cover a bar
    assert len(ax.patches) == len(rows)
    assert sorted(p.get_width() for p in ax.patches) == pytest.approx(sorted(r.sparsity for r in rows))
