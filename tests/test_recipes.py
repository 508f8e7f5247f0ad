"""configs/recipes/: each recipe selects exactly the layers its comment promises on the models it names
(small random versions built from configs), and a few real training steps reach its targets."""

from __future__ import annotations

import re
import sys
import warnings

import pytest
import torch

import prunekit as pk
from repo_paths import CONFIGS, ROOT

RECIPES = CONFIGS / "recipes"
transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(ROOT / "tests" / "inc_compat"))
from inc_models import ResNet18Like  # noqa: E402


def bert_classifier():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=2)
    return transformers.BertForSequenceClassification(config)


def llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config)


def gpt2():
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2))


def selected(model, recipe: str) -> list[str]:
    session = pk.Pruning(model, RECIPES / f"{recipe}.yaml")
    names = [layer.name for group in session.groups for layer in group.layers]
    session.close()
    return names


BERT_LAYERS = [f"bert.encoder.layer.{i}.{part}" for i in range(2) for part in
               ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "intermediate.dense", "output.dense")]


@pytest.mark.parametrize("recipe", ["bert_4x1_snip_momentum_80", "bert_2of4", "bert_unstructured_90"])
def test_bert_recipes_prune_the_encoder_blocks_only(recipe):
    assert selected(bert_classifier(), recipe) == BERT_LAYERS  # no embeddings, pooler or classifier
    encoder = bert_classifier().bert  # a BertModel: the same layers without the 'bert.' prefix
    assert selected(encoder, recipe) == [n.removeprefix("bert.") for n in BERT_LAYERS]


@pytest.mark.parametrize("recipe", ["decoder_2of4", "decoder_unstructured_50"])
def test_decoder_recipes_prune_the_block_projections_only(recipe):
    projections = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    assert sorted(selected(llama(), recipe)) == sorted(f"model.layers.{i}.{p}" for i in range(2) for p in projections)
    assert sorted(selected(gpt2(), recipe)) == sorted(f"transformer.h.{i}.{p}" for i in range(2) for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))


@pytest.mark.parametrize("recipe", ["cnn_resnet_unstructured_80", "cnn_channels_50"])
def test_cnn_recipes_leave_the_stem_shortcuts_and_classifier_dense(recipe):
    model = ResNet18Like()
    names = selected(model, recipe)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert names == [n for n in convs if n != "conv1" and "downsample" not in n] and names


def test_a_recipe_reaches_its_target_in_training():
    """bert_2of4 with its schedule compressed 20x (events at 0, 3, 6, 9, 12) on real optimizer steps."""
    model = bert_classifier()
    config = pk.load_config(RECIPES / "bert_2of4.yaml").model_dump()
    config["pruners"][0]["scheduler"].update(end_step=12, frequency=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pruning = pk.prepare_pruning(model, config, optimizer)
    ids = torch.randint(1, 64, (8, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(pruning.steps_to_complete):
        loss = model(input_ids=ids, labels=ids[:, 0] % 2).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pruning.finalize()
    report = pruning.report()
    assert all(row.sparsity == pytest.approx(0.5) for row in report.rows)
    for name in BERT_LAYERS:
        weight = model.get_submodule(name).weight
        assert int((weight.reshape(-1, 4) != 0).sum(1).max()) <= 2, name  # 2:4 along the inputs


def test_every_recipe_says_what_it_leaves_dense():
    for path in sorted(RECIPES.glob("*.yaml")):
        text = path.read_text()
        assert re.search(r"(?i)left dense|stay dense", text), path.name
        assert "Steps assume" in text, path.name
