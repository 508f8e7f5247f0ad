"""Tiny randomly initialised language models (Llama, GPT-2, OPT) and calibration batches for the one-shot tests."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

VOCAB = 96


def tiny_llama(seed: int = 0, layers: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    return transformers.LlamaForCausalLM(config).eval()


def tiny_gpt2(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def tiny_opt(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.OPTConfig(
        vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=128, word_embed_proj_dim=64,
    )
    return transformers.OPTForCausalLM(config).eval()


BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "opt": tiny_opt}


def calibration(batches: int = 4, batch: int = 2, seqlen: int = 32, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (batch, seqlen), generator=g) for _ in range(batches)]


def copy_of(model: torch.nn.Module, builder) -> torch.nn.Module:
    twin = builder()
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
