"""The `prunekit` command through its real entry point (a subprocess), error exits included."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from repo_paths import CONFIGS, ROOT


def run(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prunekit", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


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
    debug = run("--debug", "validate", str(CONFIGS / "multi_group.yaml"), "--model", "no_such_module_xyz:build")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_plan_prints_events_and_targets():
    result = run("plan", str(CONFIGS / "semi_structured_2of4.yaml"))
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line[:1].isdigit()]
    assert [(r[0], r[2]) for r in rows] == [("0", "0.0000"), ("25", "0.1250"), ("50", "0.2500"), ("75", "0.3750"), ("100", "0.5000")]


def test_plan_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "schedule.png"
    result = run("plan", str(CONFIGS / "multi_group.yaml"), "--plot", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_schedulers_lists_builtins_and_plugins():
    result = run("--plugin", "custom_scheduler", "schedulers", cwd=ROOT / "examples")
    assert result.returncode == 0, result.stderr
    names = {line.split()[0] for line in result.stdout.splitlines()[2:]}
    assert {"iterative", "oneshot", "polynomial"} <= names
    assert "decay" in result.stdout  # parameters are listed


def test_schema_is_json():
    result = run("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert "PrunerConfig" in schema["$defs"]


@pytest.mark.parametrize("command", ["validate", "plan", "schedulers", "schema"])
def test_every_command_help_has_an_example(command):
    result = run(command, "--help")
    assert result.returncode == 0 and "example:" in result.stdout and "prunekit " in result.stdout
