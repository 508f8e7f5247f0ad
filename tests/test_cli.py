"""The `prunekit` command, error exits included: ``main(argv)`` in this process (what the console
script calls), and the real entry point (``python -m prunekit``, a subprocess) where the process
matters: exit codes seen by a shell, tracebacks, hostile files, plugins that register globally."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prunekit.cli import main
from repo_paths import CONFIGS, ROOT


def run_process(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prunekit", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def run(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    """``prunekit ARGS`` run by ``main`` in this process from ``cwd`` (on ``sys.path``, as ``python -m``
    puts it): exit code, stdout and stderr as a subprocess would give them. Modules imported from a
    test's own folder are forgotten afterwards (tests reuse module names in different folders); the
    repository's (prunekit, the venv's libraries) stay: a second copy of a library breaks it."""
    out, err = io.StringIO(), io.StringIO()
    here, modules = os.getcwd(), set(sys.modules)
    os.chdir(cwd)
    sys.path.insert(0, str(cwd))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exit_:  # argparse: --help, usage errors
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    finally:
        os.chdir(here)
        sys.path.remove(str(cwd))
        for name in set(sys.modules) - modules if Path(cwd).resolve() != ROOT.resolve() else ():
            file = getattr(sys.modules[name], "__file__", None) or ""
            if file and Path(file).resolve().is_relative_to(Path(cwd).resolve()):
                del sys.modules[name]
    return subprocess.CompletedProcess(["prunekit", *args], code, out.getvalue(), err.getvalue())


def test_the_entry_point_validates_and_exits_with_the_codes_a_shell_sees(tmp_path):
    result = run_process("validate", str(CONFIGS / "multi_group.yaml"))
    assert result.returncode == 0, result.stderr
    assert "valid (3 pruner group(s))" in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("pruners:\n  - target_sparsity: 2\n")
    result = run_process("validate", str(bad))
    assert result.returncode == 2 and f"{bad}:2 pruners[0].target_sparsity" in result.stderr


def test_validate_prints_the_groups():
    result = run("validate", str(CONFIGS / "multi_group.yaml"))
    assert result.returncode == 0, result.stderr
    assert "valid (3 pruner group(s))" in result.stdout
    assert "hidden  4x1" in result.stdout


def test_config_error_exits_2_with_the_problem_lines_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pruners:\n  - target_sparsity: 2\n    patern: 4x1\n")
    result = run("validate", str(bad))
    assert result.returncode == 2
    assert f"{bad}:2 pruners[0].target_sparsity: must be < 1" in result.stderr
    assert f"{bad}:3 pruners[0].patern: unknown key 'patern'; did you mean 'pattern'?" in result.stderr
    assert "Traceback" not in result.stderr


def test_other_failures_exit_1_with_one_line_and_debug_shows_the_traceback():
    result = run("validate", str(CONFIGS / "multi_group.yaml"), "--model", "no_such_module_xyz:build")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no_such_module_xyz" in lines[0] and "--debug" in lines[0]
    debug = run_process("--debug", "validate", str(CONFIGS / "multi_group.yaml"), "--model", "no_such_module_xyz:build")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_hostile_files_exit_2_quickly_with_file_and_line(tmp_path):
    bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    bomb += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    files = {
        "bomb.yaml": ("\n".join(bomb) + "\npruners: [*a9]\n").encode(),
        "deep.yaml": ("pruners: " + "[" * 5000 + "]" * 5000 + "\n").encode(),
        "latin1.yaml": b"pruners:\n  - target_sparsity: 0.5\n    name: caf\xe9\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        result = run_process("validate", str(tmp_path / name))
        assert result.returncode == 2, (name, result.stderr)
        assert f"{tmp_path / name}:" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_config_error_prints_at_most_50_problems_and_a_path_is_never_yaml_text(tmp_path):
    many = tmp_path / "many.yaml"
    many.write_text("pruners:\n  - target_sparsity: 0.5\n" + "    name: a\n" * 300)
    result = run("validate", str(many))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 52 and lines[-1].strip() == "… and 249 more problem(s)"
    result = run("validate", "no_such_config")
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_plan_prints_events_and_targets():
    result = run("plan", str(CONFIGS / "semi_structured_2of4.yaml"))
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line[:1].isdigit()]
    assert [(r[0], r[3]) for r in rows] == [("0", "0.0000"), ("25", "0.1250"), ("50", "0.2500"), ("75", "0.3750"), ("100", "0.5000")]
    assert all(int(r[1]) == int(r[0]) + 1 for r in rows)  # the Trainer's global_step once the event has run
    assert "every target is reached after 101 optimizer steps" in result.stdout


def test_plan_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "schedule.png"
    result = run("plan", str(CONFIGS / "multi_group.yaml"), "--plot", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_schedulers_lists_builtins_and_plugins():
    result = run_process("--plugin", "custom_scheduler", "schedulers", cwd=ROOT / "examples")  # registers globally
    assert result.returncode == 0, result.stderr
    names = {line.split()[0] for line in result.stdout.splitlines()[2:]}
    assert {"iterative", "oneshot", "polynomial"} <= names
    assert "decay" in result.stdout  # parameters are listed


def test_schema_is_json():
    result = run("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert "PrunerConfig" in schema["$defs"]


@pytest.mark.parametrize("command", ["validate", "plan", "schedulers", "schema", "report", "demo"])
def test_every_command_help_has_an_example(command):
    result = run(command, "--help")
    assert result.returncode == 0 and "example:" in result.stdout and "prunekit " in result.stdout


MODEL_MODULE = '''
from torch import nn

def build():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))

class _Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(10, 6)
        self.head = nn.Linear(6, 3)

def build_odd():
    return _Head()
'''


def test_validate_with_a_model_lists_the_layers_each_group_prunes(tmp_path):
    (tmp_path / "my_models.py").write_text(MODEL_MODULE)
    config = tmp_path / "c.yaml"
    config.write_text("pruners:\n  - name: hidden\n    op_types: [Linear]\n    pattern: 4x1\n    target_sparsity: 0.5\n")
    result = run("validate", str(config), "--model", "my_models:build", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "hidden  0      Linear  32x16" in result.stdout and "hidden  2      Linear  8x32" in result.stdout
    assert "2 layer(s), 768 weights" in result.stdout


def test_validate_with_a_model_reports_selectors_and_patterns_that_do_not_fit(tmp_path):
    (tmp_path / "my_models.py").write_text(MODEL_MODULE)
    config = tmp_path / "c.yaml"
    config.write_text("pruners:\n  - op_names: ['^bodi$']\n    target_sparsity: 0.5\n")
    result = run("validate", str(config), "--model", "my_models:build_odd", cwd=tmp_path)
    assert result.returncode == 1 and "body" in result.stderr  # the close name is suggested
    config.write_text("pruners:\n  - op_names: ['^body$']\n    pattern: '2:4'\n    target_sparsity: 0.5\n")
    result = run("validate", str(config), "--model", "my_models:build_odd", cwd=tmp_path)
    assert result.returncode == 1 and "body" in result.stderr and "4" in result.stderr


def test_report_shows_sparsity_and_satisfied_patterns(tmp_path):
    import torch
    from torch import nn

    import prunekit as pk

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    session = pk.Pruning(
        model,
        {"pruners": [
            {"name": "nm", "op_names": ["^0$"], "pattern": "2:4", "target_sparsity": 0.5},
            {"name": "blocks", "op_names": ["^2$"], "pattern": "1xchannel", "target_sparsity": 0.5},
        ]},
    )
    session.prune_now()
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    torch.save({"model": model.state_dict(), "pruning": session.state_dict(), "epoch": 1}, tmp_path / "full.pt")
    plain = run("report", str(tmp_path / "plain.pt"))
    assert plain.returncode == 0, plain.stderr
    table = plain.stdout.split("\n\n")[0].splitlines()[2:]  # the rows, without the summary below them
    rows = {line.split()[0]: line for line in table}
    assert "50.00%" in rows["0"] and "2:4" in rows["0"]
    assert "50.00%" in rows["2"] and "1xchannel" in rows["2"]
    full = run("report", str(tmp_path / "full.pt"))
    assert full.returncode == 0, full.stderr
    assert "nm (0.500)" in full.stdout and "global_step 1, 2 event(s)" in full.stdout
    missing = run("report", str(tmp_path / "nope.pt"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_demo_quick_prints_the_table_and_writes_plots(tmp_path):
    pytest.importorskip("sklearn")
    result = run("demo", "--quick", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    rows = {line[:32].strip(): line[32:].split() for line in lines if "%" in line and not line.startswith("run")}
    assert list(rows) == [
        "dense",
        "dense + 110 more steps",
        "one-shot 90%, no fine-tuning",
        "one-shot 90% + fine-tuning",
        "iterative 90% (gradual)",
        "2:4 semi-structured",
    ]
    sparsity = {label: float(values[0].rstrip("%")) for label, values in rows.items()}
    assert sparsity["dense"] == 0.0
    assert sparsity["one-shot 90% + fine-tuning"] == pytest.approx(90.0, abs=0.1)
    assert sparsity["iterative 90% (gradual)"] == pytest.approx(90.0, abs=0.1)
    assert sparsity["2:4 semi-structured"] == pytest.approx(50.0, abs=0.1)
    assert all(0 <= float(values[1].rstrip("%")) <= 100 for values in rows.values())
    assert (tmp_path / "out" / "schedules.png").is_file() and (tmp_path / "out" / "layer_sparsity.png").is_file()
