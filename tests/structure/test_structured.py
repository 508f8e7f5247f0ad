"""pattern: head / channel on small random versions of each architecture: training steps prune whole
coupled units, slim() removes them with outputs unchanged, and the slimmed models save and load."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.structure import discover, load_slimmed, plan_slim

transformers = pytest.importorskip("transformers")

BOTH = {"pruners": [
    {"name": "heads", "pattern": "head", "target_sparsity": 0.5, "criterion": "snip_momentum",
     "scheduler": {"type": "iterative", "start_step": 0, "end_step": 4, "frequency": 2}},
    {"name": "ffn", "pattern": "channel", "target_sparsity": 0.5, "criterion": "snip",
     "scheduler": {"type": "iterative", "start_step": 0, "end_step": 4, "frequency": 2}},
]}


def bert():
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=16, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def llama():
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=4, max_position_embeddings=32))


def gpt2():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


IDS = torch.randint(1, 50, (4, 12), generator=torch.Generator().manual_seed(0))


def loss_of(model) -> torch.Tensor:
    if isinstance(model, transformers.BertForSequenceClassification):
        return model(input_ids=IDS, labels=IDS[:, 0] % 2).loss
    return model(input_ids=IDS, labels=IDS).loss


def train_and_prune(model, config=BOTH, steps: int | None = None):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pruning = pk.prepare_pruning(model, config, optimizer)
    for _ in range(steps or pruning.steps_to_complete):
        loss = loss_of(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    pruning.finalize()
    return pruning


@pytest.mark.parametrize("build", [bert, llama, gpt2], ids=["bert", "llama_gqa", "gpt2"])
def test_units_are_pruned_whole_and_slim_keeps_the_outputs(build):
    model = build()
    pruning = train_and_prune(model)
    assert pruning.report().rows and all(row.sparsity == pytest.approx(0.5) for row in pruning.report().rows)
    model.eval()
    with torch.no_grad():
        masked = model(input_ids=IDS).logits
    params = sum(p.numel() for p in model.parameters())
    report = plan_slim(model).apply(example_inputs={"input_ids": IDS})
    assert [row.kept for row in report.rows] == [row.units // 2 for row in report.rows]
    assert report.params_after < params and report.macs_after < report.macs_before
    with torch.no_grad():
        slimmed = model(input_ids=IDS).logits
    assert (slimmed - masked).abs().max().item() <= 1e-5


def test_gqa_keeps_query_heads_with_their_kv_head():
    model = llama()  # 8 query heads, 4 key/value heads: units are (kv head, its 2 query heads)
    train_and_prune(model, {"pruners": [{"pattern": "head", "target_sparsity": 0.5, "criterion": "magnitude"}]}, steps=1)
    attn = model.model.layers[0].self_attn
    head_dim = attn.head_dim
    kv_pruned = [bool((attn.k_proj.weight.view(4, head_dim, -1)[h] == 0).all()) for h in range(4)]
    q_pruned = [bool((attn.q_proj.weight.view(8, head_dim, -1)[h] == 0).all()) for h in range(8)]
    o_pruned = [bool((attn.o_proj.weight.view(-1, 8, head_dim)[:, h] == 0).all()) for h in range(8)]
    assert sum(kv_pruned) == 2
    assert q_pruned == [kv_pruned[h // 2] for h in range(8)] == o_pruned  # query heads 2j, 2j+1 go with kv head j
    slimmed = pk.slim(model)
    assert slimmed.model.layers[0].self_attn.k_proj.out_features == 2 * head_dim
    assert slimmed.config.num_key_value_heads == 2 and slimmed.config.num_attention_heads == 4


@pytest.mark.parametrize("build", [bert, gpt2, llama], ids=["bert", "gpt2", "llama"])
def test_slimmed_hugging_face_models_save_and_load(build, tmp_path):
    model = build()
    train_and_prune(model, {"pruners": [
        {"name": "h", "pattern": "head", "target_sparsity": 0.5, "scope": "global"},
        {"name": "f", "pattern": "channel", "target_sparsity": 0.6, "scope": "global"}]}, steps=1)
    pk.slim(model).eval()
    with torch.no_grad():
        want = model(input_ids=IDS).logits
    model.save_pretrained(tmp_path)
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    assert config.prunekit_slim["modules"]  # the shapes of every changed module
    loaded = load_slimmed(type(model)(config), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=IDS).logits, want)


def test_uniform_llama_slim_round_trips_through_plain_from_pretrained(tmp_path):
    model = llama()
    train_and_prune(model, {"pruners": [{"name": "h", "pattern": "head", "target_sparsity": 0.5},
                                        {"name": "f", "pattern": "channel", "target_sparsity": 0.25}]}, steps=1)
    pk.slim(model).eval()
    assert model.config.intermediate_size == 48 and model.config.num_key_value_heads == 2
    with torch.no_grad():
        want = model(input_ids=IDS).logits
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()(input_ids=IDS).logits, want)


def test_multihead_attention_and_transformer_encoder_layers():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    x = torch.randn(3, 7, 32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    pruning = pk.prepare_pruning(model, {"pruners": [{"name": "h", "pattern": "head", "target_sparsity": 0.5, "criterion": "gradient"},
                                                     {"name": "f", "pattern": "channel", "target_sparsity": 0.5}]}, optimizer)
    loss = model(x).pow(2).mean()
    loss.backward()
    optimizer.step()
    pruning.finalize()
    model.eval()
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[0, 5:] = True
    with torch.no_grad():
        masked = model(x, src_key_padding_mask=pad)
    pk.slim(model)
    attn = model.layers[0].self_attn
    assert type(attn).__name__ == "SlimMultiheadAttention" and attn.num_heads == 2 and model.layers[0].linear1.out_features == 32
    with torch.no_grad():
        assert (model(x, src_key_padding_mask=pad) - masked).abs().max().item() <= 1e-5


class ConvNet(nn.Module):
    """conv1 -> bn1 -> relu -> conv2 -> bn2 -> relu -> conv3 (+ conv2's input: a residual) -> pool -> fc."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 24, 3, padding=1)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(24, 10)

    def forward(self, x):
        a = torch.relu(self.bn1(self.conv1(x)))
        b = torch.relu(self.bn2(self.conv2(a)))
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv3(b + a))), 1))


def test_conv_chains_prune_filters_and_slim_exactly():
    model = ConvNet()
    groups, reasons = discover(model, "channel")
    assert [g.name for g in groups] == ["conv3"]  # conv1 and conv2 feed the residual add
    assert "coupled" in reasons["conv1"] and "add" in reasons["conv2"]
    with pytest.raises(pk.PruningError, match=r"conv2.*belong to no channel structure.*add"):
        pk.Pruning(model, {"pruners": [{"pattern": "channel", "op_names": ["^conv2$"], "target_sparsity": 0.5}]})
    x = torch.randn(4, 3, 8, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    pruning = pk.prepare_pruning(model, {"pruners": [{"pattern": "channel", "op_names": ["^conv3$"], "target_sparsity": 0.5,
                                                      "criterion": "snip"}]}, optimizer)
    model(x).pow(2).mean().backward()
    optimizer.step()
    pruning.finalize()
    model.eval()
    with torch.no_grad():
        masked = model(x)
    report = plan_slim(model).apply(example_inputs=(x,))
    assert model.conv3.out_channels == 12 and model.fc.in_features == 12 and report.macs_after < report.macs_before
    with torch.no_grad():
        assert (model(x) - masked).abs().max().item() <= 1e-5


def test_batch_norm_between_convs_is_removed_with_the_filter():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    pruning = pk.Pruning(model, {"pruners": [{"pattern": "channel", "op_names": ["^0$"], "target_sparsity": 0.5}]})
    pruning.prune_now()
    pruning.finalize()
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        masked = model(x)
    pk.slim(model)
    assert model[1].num_features == 4 and model[1].running_mean.shape == (4,) and model[3].in_channels == 4
    with torch.no_grad():
        assert (model(x) - masked).abs().max().item() <= 1e-5


def test_declared_units_for_a_structure_prunekit_does_not_know():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.expand, self.squeeze = nn.Linear(8, 32), nn.Linear(32, 8)

        def forward(self, x):
            return self.squeeze(torch.tanh(self.expand(x)))

    torch.manual_seed(0)
    model = Odd()
    config = {"pruners": [{"pattern": "channel", "target_sparsity": 0.25,
                           "units": [{"name": "mlp", "outputs": ["^expand$"], "inputs": ["^squeeze$"]}]}]}
    pruning = pk.Pruning(model, config)
    pruning.prune_now()
    pruning.finalize()
    x = torch.randn(5, 8)
    with torch.no_grad():
        masked = model(x)
    pk.slim(model, config)
    assert model.expand.out_features == 24
    with torch.no_grad():
        assert (model(x) - masked).abs().max().item() <= 1e-6
    bad = {"pruners": [{"pattern": "channel", "target_sparsity": 0.25, "units": [{"outputs": ["^expand$"], "inputs": ["^expand$"]}]}]}
    with pytest.raises(pk.PruningError, match="do not agree on the coupled width"):
        pk.Pruning(Odd(), bad)


def test_global_scope_respects_per_structure_bounds_and_never_removes_the_last_head():
    model = bert()
    config = {"pruners": [{"pattern": "head", "scope": "global", "target_sparsity": 0.85, "max_sparsity_per_op": 0.98}]}
    with pytest.warns(UserWarning, match="reached max_sparsity_per_op"):
        pruning = train_and_prune(model, config, steps=1)
    kept = [int((~p).sum()) for p in pruning.groups[0].pruned_units.values()]
    assert all(k >= 1 for k in kept) and sum(kept) == 2  # 8 heads, 85% -> 7 would go; one per layer must stay
    model = bert()
    config = {"pruners": [{"pattern": "head", "scope": "global", "target_sparsity": 0.5, "max_sparsity_per_op": 0.5}]}
    pruning = train_and_prune(model, config, steps=1)
    assert [int(p.sum()) for p in pruning.groups[0].pruned_units.values()] == [2, 2]


def test_resume_with_head_patterns_matches_an_uninterrupted_run():
    config = {"pruners": [{"pattern": "head", "target_sparsity": 0.5, "criterion": "snip_momentum",
                           "scheduler": {"type": "iterative", "start_step": 0, "end_step": 6, "frequency": 3}}]}

    def run(stop_at: int | None, state=None, model=None, optimizer_state=None):
        model = model or bert()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        pruning = pk.prepare_pruning(model, config, optimizer)
        if state is not None:
            pruning.load_state_dict(state)
        while pruning.global_step < 8:
            if stop_at is not None and pruning.global_step == stop_at:
                return model, pruning, optimizer
            loss = loss_of(model)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        pruning.finalize()
        return model, pruning, optimizer

    full_model, full, _ = run(None)
    half_model, half, optimizer = run(4)
    state = half.state_dict()
    weights = {k: v.clone() for k, v in half_model.state_dict().items()}
    half.close()
    fresh = bert()
    fresh.load_state_dict(weights)
    _, resumed, _ = run(None, state, fresh, optimizer.state_dict())
    for name, mask in full.masks.items():
        assert torch.equal(mask, resumed.masks[name]), name
    for name, units in full.groups[0].pruned_units.items():
        assert torch.equal(units, resumed.groups[0].pruned_units[name])


def test_what_cannot_be_pruned_together_is_a_clear_error():
    model = bert()
    with pytest.raises(pk.PruningError, match=r"prunes .*query.*key.*value.*output\.dense together, but op_names selects only .*query"):
        pk.Pruning(model, {"pruners": [{"pattern": "head", "op_names": [r"self\.query$"], "target_sparsity": 0.5}]})
    with pytest.raises(pk.PruningError, match=r"classifier.*belong to no channel structure"):
        pk.Pruning(model, {"pruners": [{"pattern": "channel", "op_names": ["classifier", "intermediate"], "target_sparsity": 0.5}]})
    with pytest.raises(pk.PruningError, match="selects no structure"):
        pk.Pruning(nn.Sequential(nn.Linear(4, 4)), {"pruners": [{"pattern": "head", "target_sparsity": 0.5}]})
    with pytest.raises(pk.ConfigError, match="is pruned by type basic"):
        pk.load_config({"pruners": [{"type": "block_mask", "pattern": "head", "target_sparsity": 0.5}]})


def test_slim_refuses_while_a_session_prunes_the_model():
    model = bert()
    pruning = pk.Pruning(model, {"pruners": [{"pattern": "head", "target_sparsity": 0.5}]})
    pruning.prune_now()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.PruningError, match=r"call finalize\(\) on it before slim\(\).*Nothing was changed"):
        pk.slim(model)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in before.items()}
    pruning.finalize()
    assert pk.slim(model).bert.encoder.layer[0].attention.self.query.out_features == 16


def test_a_depthwise_conv_passes_the_unit_through():
    """expand 1x1 -> bn -> relu6 -> depthwise 3x3 -> bn -> relu6 -> project 1x1 (an inverted residual without the skip)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 16, 1), nn.BatchNorm2d(16), nn.ReLU6(), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                          nn.BatchNorm2d(16), nn.ReLU6(), nn.Conv2d(16, 8, 1))
    groups, reasons = discover(model, "channel")
    assert [g.name for g in groups] == ["0"] and "depthwise" in reasons["3"]
    assert {m.module for m in groups[0].members} == {"0", "1", "3", "4", "6"}
    pruning = pk.Pruning(model, {"pruners": [{"pattern": "channel", "op_names": ["^0$"], "target_sparsity": 0.5}]})
    pruning.prune_now()
    pruning.finalize()
    model.eval()
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        masked = model(x)
    pk.slim(model)
    assert model[0].out_channels == 8 and model[3].groups == 8 and model[3].weight.shape == (8, 1, 3, 3) and model[6].in_channels == 8
    with torch.no_grad():
        assert (model(x) - masked).abs().max().item() <= 1e-5


def test_command_line_slims_a_hugging_face_folder(tmp_path, capsys):
    from prunekit.cli import main as cli_main

    model = bert()
    train_and_prune(model, {"pruners": [{"name": "h", "pattern": "head", "target_sparsity": 0.5},
                                        {"name": "f", "pattern": "channel", "target_sparsity": 0.5}]}, steps=1)
    model.eval()
    with torch.no_grad():
        want = model(input_ids=IDS).logits
    model.save_pretrained(tmp_path / "pruned")
    assert cli_main(["slim", str(tmp_path / "pruned"), "--out", str(tmp_path / "slim")]) == 0
    out = capsys.readouterr().out
    assert "bert.encoder.layer.0.attention" in out and "2 / 4" in out and "32 / 64" in out and "wrote" in out
    config = transformers.AutoConfig.from_pretrained(tmp_path / "slim")
    loaded = load_slimmed(transformers.BertForSequenceClassification(config), tmp_path / "slim").eval()
    with torch.no_grad():
        assert (loaded(input_ids=IDS).logits - want).abs().max().item() <= 1e-5
    assert cli_main(["slim", str(tmp_path / "pruned"), "--out", str(tmp_path / "slim")]) == 1  # never overwritten
    assert "not an empty folder" in capsys.readouterr().err


def test_a_conv_read_by_a_linear_after_a_flatten_owns_its_block_of_columns():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    groups, _ = discover(model, "channel")
    assert [(m.module, m.size) for m in groups[1].members if m.role == "consume"] == [("4", 16)]
    pruning = pk.Pruning(model, {"pruners": [{"pattern": "channel", "op_names": ["^2$"], "target_sparsity": 0.5}]})
    pruning.prune_now()
    pruning.finalize()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        masked = model(x)
    pk.slim(model)
    assert model[2].out_channels == 2 and model[4].in_features == 32
    with torch.no_grad():
        assert (model(x) - masked).abs().max().item() <= 1e-5


def test_global_scope_counts_a_conv_shared_by_two_chains_once():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3))
    pruning = pk.Pruning(model, {"pruners": [{"pattern": "channel", "scope": "global", "target_sparsity": 0.5}]})
    record = pruning.prune_now()
    assert [g.name for g in pruning.groups[0].unit_groups] == ["0", "2"]
    assert record.sparsity == pytest.approx(0.5, abs=0.06)  # units of unequal size: the closest the units allow
    middle = pk.Pruning(nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3)),
                        {"pruners": [{"pattern": "channel", "op_names": ["^2$"], "target_sparsity": 0.5}]})
    assert [g.name for g in middle.groups[0].unit_groups] == ["2"]  # the middle conv of a chain, alone


def test_structures_with_something_of_their_width_in_between_are_not_units():
    class NormedMlp(nn.Module):  # timm-style Mlp with a norm between the two layers
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.norm, self.fc2 = nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 8)

        def forward(self, x):
            return self.fc2(self.norm(torch.relu(self.fc1(x))))

    assert discover(NormedMlp(), "channel")[0] == []
    with pytest.raises(pk.PruningError, match="belong to no channel structure"):
        pk.Pruning(NormedMlp(), {"pruners": [{"pattern": "channel", "op_names": ["fc"], "target_sparsity": 0.5}]})
    mha = nn.MultiheadAttention(16, 4, add_bias_kv=True)
    assert discover(mha, "head")[0] == []


def test_slim_checks_outputs_and_puts_everything_back_when_they_change():
    class SoftmaxMlp(nn.Module):  # a softmax over the units: removing zeroed units changes the normalisation
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)

        def forward(self, x):
            return self.fc2(self.fc1(x).softmax(-1))

    torch.manual_seed(0)
    model = SoftmaxMlp()
    pruning = pk.Pruning(model, {"pruners": [{"pattern": "channel", "target_sparsity": 0.5}]})
    pruning.prune_now()
    pruning.finalize()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.PruningError, match="changed the model's outputs.*restored"):
        pk.plan_slim(model).apply(example_inputs=(torch.randn(4, 8),))
    assert model.fc1.out_features == 16 and all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_slim_keeps_dtype_flags_subclass_attributes_and_hooks():
    class Scaled(nn.Linear):
        def __init__(self, i: int, o: int, scale: float = 1.0) -> None:
            super().__init__(i, o)
            self.scale = scale

        def forward(self, x):
            return super().forward(x) * self.scale

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).to(torch.bfloat16)
    pruning = pk.Pruning(model, {"pruners": [{"pattern": "channel", "op_names": ["^0$"], "target_sparsity": 0.5}]})
    pruning.prune_now()
    pruning.finalize()
    model.eval()
    model[3].weight.requires_grad_(False)
    pk.slim(model)
    assert model[1].running_mean.dtype == torch.bfloat16 and model[0].weight.dtype == torch.bfloat16
    assert not model.training and not model[3].weight.requires_grad
    model(torch.randn(1, 3, 8, 8, dtype=torch.bfloat16))  # runs in bf16
    mlp = nn.Sequential(Scaled(4, 8, scale=3.0), nn.ReLU(), Scaled(8, 4, scale=0.5))
    seen = []
    mlp[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    pruning = pk.Pruning(mlp, {"pruners": [{"pattern": "channel", "units": [{"outputs": ["^0$"], "inputs": ["^2$"]}], "target_sparsity": 0.5}]})
    pruning.prune_now()
    pruning.finalize()
    x = torch.randn(2, 4)
    with torch.no_grad():
        masked = mlp(x)
    pk.plan_slim(mlp, {"pruners": [{"pattern": "channel", "units": [{"outputs": ["^0$"], "inputs": ["^2$"]}], "target_sparsity": 0.5}]}).apply()
    with torch.no_grad():
        assert (mlp(x) - masked).abs().max().item() <= 1e-6
    assert type(mlp[0]) is Scaled and mlp[0].scale == 3.0 and mlp[0].out_features == 4 and seen[-1] == (2, 4)
