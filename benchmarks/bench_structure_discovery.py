"""What coupled structures prunekit finds, next to Torch-Pruning's dependency graph, model by model.

For each model: prunekit's head groups (heads) and channel groups (FFN channels, conv filters), and
the Conv2d layers whose output channels it can prune; Torch-Pruning's (``pip install torch-pruning``)
``DependencyGraph.get_all_groups`` over Conv2d/Linear roots (classifier ignored): groups, prunable
channels. For both, "convs" counts the Conv2d layers some group changes (output or input channels). Models: a ResNet-18-shaped CNN, EfficientNet-Lite0 (the
``efficientnet-lite-pytorch`` package, when installed), and small random BERT, Llama (grouped-query
attention), GPT-2 and ``nn.TransformerEncoder``. Prints one table; each cell is a count, or the
error that stopped the tool on that model.
"""

from __future__ import annotations

import pathlib
import sys
import warnings

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "real_models"))
from _machine import print_machine  # noqa: E402
from bench_structured import ResNet18Shaped  # noqa: E402

from prunekit.structure import discover  # noqa: E402


def models() -> list[tuple[str, nn.Module, object, nn.Module | None]]:
    """(label, model, example input, classifier to ignore)."""
    out: list[tuple[str, nn.Module, object, nn.Module | None]] = []
    resnet = ResNet18Shaped()
    out.append(("ResNet-18-shaped", resnet, torch.randn(1, 1, 28, 28), resnet.fc))
    try:
        from efficientnet_lite_pytorch import EfficientNet

        eff = EfficientNet.from_name("efficientnet-lite0")
        out.append(("EfficientNet-Lite0", eff, torch.randn(1, 3, 224, 224), eff._fc))
    except ImportError:
        pass
    try:
        import transformers
    except ImportError:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bert = transformers.BertForSequenceClassification(transformers.BertConfig(
            vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, num_labels=2))
        llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4))
        gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=32))
    ids = torch.randint(1, 100, (1, 16))
    out += [("BERT (tiny)", bert, ids, bert.classifier), ("Llama GQA (tiny)", llama, ids, llama.lm_head),
            ("GPT-2 (tiny)", gpt2, ids, gpt2.lm_head)]
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), 2, enable_nested_tensor=False)
    out.append(("nn.TransformerEncoder", enc, torch.randn(1, 8, 64), None))
    return out


def prunekit_counts(model: nn.Module) -> str:
    heads, _ = discover(model, "head")
    channels, _ = discover(model, "channel")
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    conv_units = {m.module for g in channels for m in g.members if m.module in convs}
    return (f"{len(heads)} groups / {sum(g.units for g in heads)} heads; {len(channels)} groups / {sum(g.units for g in channels)} channels; "
            f"convs {len(conv_units)}/{len(convs)}")


def torch_pruning_counts(model: nn.Module, example: object, ignored: nn.Module | None) -> str:
    try:
        import torch_pruning as tp
    except ImportError:
        return "not installed"
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        groups = list(graph.get_all_groups(ignored_layers=[ignored] if ignored is not None else [], root_module_types=[nn.Conv2d, nn.Linear]))
    except Exception as err:  # noqa: BLE001 - the tool's failure is the measurement
        return f"error: {type(err).__name__}: {str(err)[:60]}"
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    covered = {id(dep.target.module) for g in groups for dep, _ in g} & {id(c) for c in convs}
    channels = sum(len(g[0][1]) for g in groups)
    return f"{len(groups)} groups / {channels} channels; convs {len(covered)}/{len(convs)}"


def main() -> None:
    print_machine()
    rows = [(label, prunekit_counts(model), torch_pruning_counts(model, example, ignored)) for label, model, example, ignored in models()]
    width = max(len(r[1]) for r in rows)
    print(f"{'model':<22} {'prunekit':<{width}}  Torch-Pruning DependencyGraph")
    print("-" * (24 + width + 32))
    for label, ours, theirs in rows:
        print(f"{label:<22} {ours:<{width}}  {theirs}")


if __name__ == "__main__":
    main()
