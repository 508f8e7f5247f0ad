"""prunekit.oneshot on tiny random Llama, GPT-2 and OPT models: what users rely on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.post_training import find_blocks
from tiny_models import BUILDERS, calibration, copy_of, same, snapshot, tiny_gpt2, tiny_llama

BLOCK_LINEARS = {"llama": ("Linear",), "gpt2": ("Conv1D",), "opt": ("Linear",)}


def group(method: str, pattern: str = "1x1", **extra) -> dict:
    return {"pruners": [{"type": method, "pattern": pattern, "target_sparsity": 0.5, "op_types": ["Linear", "Conv1D"], **extra}]}


def weight_2d(model: nn.Module, name: str) -> torch.Tensor:
    module = model.get_submodule(name)
    return module.weight.t() if type(module).__name__ == "Conv1D" else module.weight  # [out, in]


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_sparse_gpt_reconstructs_each_layer_better_than_wanda_and_magnitude(arch: str) -> None:
    build = BUILDERS[arch]
    dense = build()
    errors = {}
    for method in ("magnitude", "wanda", "sparse_gpt"):
        model = copy_of(dense, build)
        result = pk.oneshot(model, group(method), calibration(), progress=False, measure_error=True)
        errors[method] = {row.name: row.error for row in result.layers}
        assert result.sparsity == pytest.approx(0.5, abs=1e-3)
        assert {row.module for row in result.layers} == set(BLOCK_LINEARS[arch])
    for name, err in errors["sparse_gpt"].items():
        assert err < errors["wanda"][name] and err < errors["magnitude"][name], (name, {m: e[name] for m, e in errors.items()})


@pytest.mark.parametrize("arch", sorted(BUILDERS))
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparse_gpt"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_n_of_m_results_are_exactly_n_of_m_along_the_inputs(arch: str, method: str, pattern: str) -> None:
    n, m = map(int, pattern.split(":"))
    model = BUILDERS[arch]()
    before = snapshot(model)
    result = pk.oneshot(model, group(method, pattern), calibration(batches=2), progress=False)
    for row in result.layers:
        w = weight_2d(model, row.name)
        zeros = (w == 0).reshape(w.shape[0], w.shape[1] // m, m).sum(-1)
        assert (zeros == n).all(), row.name
    outside = [k for k in before if not any(k.startswith(r.name + ".") for r in result.layers)]
    assert outside and all(torch.equal(model.state_dict()[k], before[k]) for k in outside)  # embeddings, norms, head untouched


def test_wanda_prunes_half_of_every_output_row_and_magnitude_half_of_each_layer() -> None:
    model = tiny_llama()
    pk.oneshot(model, group("wanda"), calibration(), progress=False)
    w = model.model.layers[1].mlp.down_proj.weight
    assert ((w == 0).sum(1) == w.shape[1] // 2).all()
    model = tiny_llama()
    pk.oneshot(model, group("magnitude"), calibration(), progress=False)
    w = model.model.layers[1].mlp.down_proj.weight
    assert int((w == 0).sum()) == w.numel() // 2
    assert len(set((w == 0).sum(1).tolist())) > 1  # compared over the layer, not per row


def test_magnitude_reads_no_calibration_data_unless_errors_are_measured() -> None:
    class Untouchable:
        def __iter__(self):
            raise AssertionError("magnitude iterated the calibration data")

    model = tiny_llama()
    result = pk.oneshot(model, group("magnitude"), Untouchable(), progress=False)
    assert result.calibration_tokens == 0 and result.sparsity == pytest.approx(0.5, abs=1e-3)
    result = pk.oneshot(tiny_llama(), group("magnitude"), calibration(), progress=False, measure_error=True)
    assert result.calibration_tokens == 4 * 2 * 32 and all(row.error > 0 for row in result.layers)


def test_calibration_is_propagated_through_the_pruned_blocks() -> None:
    """Block 1 is pruned from the outputs of the pruned block 0: pruning block 0 differently changes block 1."""
    dense = tiny_llama()
    a, b = copy_of(dense, tiny_llama), copy_of(dense, tiny_llama)
    pk.oneshot(a, group("sparse_gpt"), calibration(), progress=False)
    cfg = group("sparse_gpt")
    cfg["pruners"][0]["excluded_op_names"] = [r"^model\.layers\.0\."]
    pk.oneshot(b, cfg, calibration(), progress=False)
    assert torch.equal(b.model.layers[0].mlp.down_proj.weight, dense.model.layers[0].mlp.down_proj.weight)
    assert not torch.equal(a.model.layers[1].mlp.down_proj.weight, b.model.layers[1].mlp.down_proj.weight)


@pytest.mark.parametrize("form", ["tensor", "dict", "tuple"])
def test_calibration_batches_can_be_tensors_dicts_or_tuples(form: str) -> None:
    batches = calibration(batches=2)
    wrap = {"tensor": lambda t: t, "dict": lambda t: {"input_ids": t, "attention_mask": torch.ones_like(t), "labels": t},
            "tuple": lambda t: (t, t)}[form]
    reference = tiny_llama()
    pk.oneshot(reference, group("wanda"), batches, progress=False)
    model = tiny_llama()
    pk.oneshot(model, group("wanda"), (wrap(t) for t in batches), progress=False)  # a generator, iterated once
    assert same(model, snapshot(reference))


def test_offloaded_activations_give_the_same_model() -> None:
    a, b = tiny_llama(), tiny_llama()
    pk.oneshot(a, group("sparse_gpt"), calibration(), progress=False)
    pk.oneshot(b, group("sparse_gpt"), calibration(), progress=False, offload=True)
    assert same(a, snapshot(b))


def test_owl_varies_block_sparsity_and_keeps_the_target() -> None:
    model = tiny_llama(layers=4)
    result = pk.oneshot(model, group("wanda", allocation="owl", owl_lambda=0.1), calibration(), progress=False)
    per_block = result.block_sparsity["0"] if "0" in result.block_sparsity else next(iter(result.block_sparsity.values()))
    assert len(per_block) == 4 and max(per_block) - min(per_block) == pytest.approx(0.2)
    assert sum(per_block) / 4 == pytest.approx(0.5)
    assert result.sparsity == pytest.approx(0.5, abs=2e-3)
    by_block = {}
    for row in result.layers:
        by_block.setdefault(int(row.name.split(".")[2]), []).append(row.target)
    assert [targets[0] for _, targets in sorted(by_block.items())] == pytest.approx(per_block)


def test_layers_are_chosen_with_the_usual_selectors() -> None:
    model = tiny_llama()
    cfg = {"pruners": [
        {"name": "attention", "type": "sparse_gpt", "pattern": "2:4", "target_sparsity": 0.5, "op_names": [r"self_attn\.(q|k|v|o)_proj"]},
        {"name": "mlp", "type": "wanda", "target_sparsity": 0.6, "op_names": [r"mlp\."], "excluded_op_names": [r"down_proj"]},
    ]}
    result = pk.oneshot(model, cfg, calibration(), progress=False)
    methods = {row.name.split(".", 3)[-1]: row.method for row in result.layers if ".0." in row.name}
    assert methods == {"self_attn.q_proj": "sparse_gpt", "self_attn.k_proj": "sparse_gpt", "self_attn.v_proj": "sparse_gpt",
                       "self_attn.o_proj": "sparse_gpt", "mlp.gate_proj": "wanda", "mlp.up_proj": "wanda"}
    assert float((model.model.layers[2].mlp.up_proj.weight == 0).float().mean()) == pytest.approx(0.6, abs=0.01)
    assert not (model.model.layers[2].mlp.down_proj.weight == 0).any()
    assert "model.layers.0.mlp.gate_proj" in result.table() and "wanda" in result.table()


def test_the_model_is_left_in_the_mode_it_was_in() -> None:
    model = tiny_llama()
    model.train()
    model.model.layers[1].eval()
    pk.oneshot(model, group("wanda"), calibration(batches=1), progress=False)
    assert model.training and model.model.layers[0].training and not model.model.layers[1].training


# ------------------------------------------------------------------------------ structure and errors
class NoBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x).relu())


def test_a_model_without_blocks_is_a_clear_error_not_a_division_by_zero() -> None:
    model = NoBlocks()
    before = snapshot(model)
    with pytest.raises(pk.PruningError, match=r"cannot find the blocks of NoBlocks.*blocks: <dotted path>"):
        pk.oneshot(model, group("sparse_gpt"), [torch.randn(4, 8)], progress=False)
    assert same(model, before)


def test_a_wrong_blocks_path_names_the_module_lists_there_are() -> None:
    model = tiny_llama()
    with pytest.raises(pk.PruningError, match=r"blocks: 'model\.decoder\.layers' is not .* \(module lists: model\.layers\)"):
        pk.oneshot(model, group("wanda", blocks="model.decoder.layers"), calibration(batches=1), progress=False)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(32, 64), nn.Linear(64, 32)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.gelu(self.up(h)))


class Stack(nn.Module):
    """A model of our own: blocks in a ModuleList under a name no library uses."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 32)
        self.stages = nn.ModuleList(Block() for _ in range(3))
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for stage in self.stages:
            h = h + stage(h)
        return self.head(h)


def test_any_module_list_of_identical_blocks_is_found_and_named_paths_work() -> None:
    model = Stack()
    assert find_blocks(model).path == "stages"
    data = [torch.randn(8, 16) for _ in range(4)]
    result = pk.oneshot(model, group("sparse_gpt", blocks="stages"), data, progress=False)
    assert result.blocks == "stages" and len(result.layers) == 6
    assert not (model.embed.weight == 0).any() and not (model.head.weight == 0).any()


def test_a_layer_named_outside_the_blocks_is_an_error_that_changes_nothing() -> None:
    model = tiny_llama()
    before = snapshot(model)
    cfg = {"pruners": [{"type": "wanda", "target_sparsity": 0.5, "op_names": ["lm_head", "mlp"]}]}
    with pytest.raises(pk.PruningError, match=r"layer 'lm_head' is outside the model's blocks \(model\.layers\.\*\)"):
        pk.oneshot(model, cfg, calibration(batches=1), progress=False)
    assert same(model, before)


def test_groups_that_select_nothing_inside_the_blocks_are_an_error() -> None:
    with pytest.raises(pk.PruningError, match="select no layer inside the model's blocks"):
        pk.oneshot(tiny_gpt2(), {"pruners": [{"type": "wanda", "target_sparsity": 0.5, "op_types": ["Linear"]}]},
                   calibration(batches=1), progress=False)


def test_training_time_groups_and_one_shot_groups_do_not_mix() -> None:
    cfg = {"pruners": [{"type": "wanda", "target_sparsity": 0.5}, {"name": "b", "target_sparsity": 0.5}]}
    with pytest.raises(pk.PruningError, match=r"groups \['b'\] are not one-shot types"):
        pk.oneshot(tiny_llama(), cfg, calibration(batches=1), progress=False)
    with pytest.raises(pk.PruningError, match="needs pruner groups of a one-shot type"):
        pk.oneshot(tiny_llama(), {"pruners": [{"target_sparsity": 0.5}]}, calibration(batches=1), progress=False)


def test_empty_calibration_and_non_finite_weights_are_refused_before_anything_changes() -> None:
    model = tiny_llama()
    before = snapshot(model)
    with pytest.raises(pk.PruningError, match="calibration data is empty"):
        pk.oneshot(model, group("wanda"), [], progress=False)
    with torch.no_grad():
        model.model.layers[2].mlp.up_proj.weight[0, 0] = float("nan")
    before = snapshot(model)
    with pytest.raises(pk.PruningError, match=r"layer 'model\.layers\.2\.mlp\.up_proj': the weight has NaN"):
        pk.oneshot(model, group("sparse_gpt"), calibration(batches=1), progress=False)
    assert all(torch.equal(v, before[k]) or torch.isnan(v).any() for k, v in model.state_dict().items())
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, before["model.layers.0.mlp.up_proj.weight"])


def test_a_batch_that_is_not_a_tensor_or_dict_names_its_type() -> None:
    with pytest.raises(pk.PruningError, match="a calibration batch must be a tensor of input ids, a dict .* got str"):
        pk.oneshot(tiny_llama(), group("wanda"), ["some text"], progress=False)


@pytest.mark.parametrize("journal", ["disk", "memory"])
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failure_in_a_later_block_restores_the_model_exactly(journal: str, error: type) -> None:
    model = tiny_llama()
    before = snapshot(model)

    def fail(module, args, kwargs):
        raise error("out of memory (simulated)")

    # blocks 0 and 1 are pruned (2 x 7 layers) when block 2 fails
    handle = model.model.layers[2].register_forward_pre_hook(fail, with_kwargs=True)
    with pytest.raises(error, match="simulated") as info:
        pk.oneshot(model, group("sparse_gpt"), calibration(), progress=False, journal=journal)
    handle.remove()
    assert same(model, before)
    assert "the model is unchanged (14 pruned layers were restored" in "".join(getattr(info.value, "__notes__", []))


def test_a_layer_that_never_runs_is_an_error_and_the_model_is_restored() -> None:
    model = Stack()
    model.stages[2].unused = nn.Linear(32, 32)  # a layer its forward never calls
    before = snapshot(model)
    with pytest.raises(pk.PruningError, match=r"layer 'stages\.2\.unused' never ran .* the model is unchanged \(4 pruned layers"):
        pk.oneshot(model, group("wanda"), [torch.randn(8, 16)], progress=False)
    assert same(model, before)


def test_journal_off_says_the_earlier_blocks_stay_pruned() -> None:
    model = Stack()
    model.stages[2].unused = nn.Linear(32, 32)
    with pytest.raises(pk.PruningError, match="journal='off', so the 4 layers pruned before this failure stay pruned"):
        pk.oneshot(model, group("wanda"), [torch.randn(8, 16)], progress=False, journal="off")
    assert int((model.stages[0].up.weight == 0).sum()) == 32 * 64 // 2


def test_a_journal_that_cannot_be_written_stops_the_run_and_says_what_to_do(monkeypatch) -> None:
    model = tiny_llama()
    before = snapshot(model)
    saves = {"n": 0}
    real_save = torch.save

    def full_disk(obj, path, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] == 2:  # block 0 saved, block 1 fails
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(pk.PruningError, match=r"could not write the original weights .* No space left .* journal='memory'.* unchanged \(7"):
        pk.oneshot(model, group("wanda"), calibration(batches=1), progress=False)
    assert same(model, before)


def test_the_journal_folder_is_removed_after_the_run(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    pk.oneshot(tiny_llama(), group("wanda"), calibration(batches=1), progress=False)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ config
@pytest.mark.parametrize(("extra", "message"), [
    ({"pattern": "4x1"}, "sparse_gpt prunes unstructured \\(1x1\\) or N:M, not 4x1"),
    ({"pattern": "2:4", "target_sparsity": 0.3}, "one-shot 2:4 prunes exactly 2 of every 4 weights.*set target_sparsity: 0.5"),
    ({"pattern": "2:4", "allocation": "owl"}, "OWL changes each block's sparsity"),
    ({"percdamp": -0.1}, "percdamp"),
    ({"blocksize": 0}, "blocksize"),
    ({"criterion": "snip"}, "criterion"),
    ({"scheduler": {"type": "iterative", "end_step": 10}}, "scheduler"),
])
def test_one_shot_configs_are_validated_with_the_key_named(extra: dict, message: str) -> None:
    cfg = {"pruners": [{"type": "sparse_gpt", "target_sparsity": 0.5, **extra}]}
    with pytest.raises(pk.ConfigError, match=message):
        pk.load_config(cfg)


def test_a_one_shot_type_in_a_training_session_points_to_prunekit_oneshot() -> None:
    model = tiny_llama()
    before = snapshot(model)
    with pytest.raises(pk.PruningError, match=r"type 'wanda' prunes once from calibration data.*prunekit\.oneshot"):
        pk.Pruning(model, group("wanda"))
    assert same(model, before)


def test_one_shot_types_are_listed_with_their_parameters() -> None:
    for name in ("sparse_gpt", "wanda", "magnitude"):
        assert name in pk.PRUNERS.names()
    config = pk.load_config(group("sparse_gpt", percdamp=0.05, blocksize=64))
    assert (config.pruners[0].percdamp, config.pruners[0].blocksize) == (0.05, 64)
    assert pk.load_config(config.model_dump()).pruners[0].percdamp == 0.05


# ------------------------------------------------------------------------------ after pruning
def test_the_zeros_survive_sparse_fine_tuning_with_pattern_lock_and_save_pretrained(tmp_path) -> None:
    model = tiny_llama()
    result = pk.oneshot(model, group("sparse_gpt", "2:4"), calibration(), progress=False)
    zeros = {row.name: weight_2d(model, row.name) == 0 for row in result.layers}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    session = pk.prepare_pruning(model, result.pattern_lock_config(), optimizer)
    model.train()
    for batch in calibration(batches=5, seed=9):
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    session.finalize()
    moved = model.model.layers[0].mlp.up_proj.weight
    assert not torch.equal(moved[moved != 0], snapshot(tiny_llama())["model.layers.0.mlp.up_proj.weight"][moved != 0])
    for name, was_zero in zeros.items():
        assert (weight_2d(model, name)[was_zero] == 0).all(), name
    model.save_pretrained(tmp_path / "pruned")
    import transformers

    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "pruned")
    for name, was_zero in zeros.items():
        assert torch.equal(weight_2d(loaded, name) == 0, weight_2d(model, name) == 0), name


def test_gpt2_conv1d_layers_hand_over_to_pattern_lock() -> None:
    model = tiny_gpt2()
    result = pk.oneshot(model, group("wanda"), calibration(), progress=False)
    config = result.pattern_lock_config()
    assert config["pruners"][0]["op_types"] == ["Conv1D"]
    zeros = {row.name: model.get_submodule(row.name).weight == 0 for row in result.layers}
    session = pk.Pruning(model, config)
    session.prune_now()
    assert set(session.masks) == set(zeros)
    for name, mask in session.masks.items():
        assert torch.equal(~mask, zeros[name]), name


def test_incs_prepare_pruning_with_a_dataloader_prunes_at_once_and_locks_the_zeros() -> None:
    model = tiny_llama()
    inc = {"pruning_configs": [{"pruning_type": "sparse_gpt", "op_names": ["model.layers"], "pattern": "1x1",
                                "target_sparsity": 0.5}]}
    loader = torch.utils.data.DataLoader(torch.randint(0, 96, (8, 32)), batch_size=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    session = pk.prepare_pruning(model, inc, optimizer, dataloader=loader, loss_func=None, device="cpu")
    w = model.model.layers[1].self_attn.q_proj.weight
    assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)
    zero = w == 0
    batch = next(iter(loader))
    model.train()
    model(batch, labels=batch).loss.backward()
    optimizer.step()
    assert (w[zero] == 0).all()
    session.finalize()


def test_prepare_pruning_with_bad_options_refuses_before_pruning() -> None:
    model = tiny_llama()
    before = snapshot(model)
    with pytest.raises(ValueError, match="reapply must be 'auto' or 'always'"):
        pk.prepare_pruning(model, group("wanda"), dataloader=calibration(batches=1), reapply="bogus")
    assert same(model, before)
    with pytest.raises(TypeError, match="device= and loss_func= belong to the post-training form"):
        pk.prepare_pruning(model, {"pruners": [{"target_sparsity": 0.5}]}, device="cpu")
    with pytest.warns(UserWarning, match="loss_func is not used"):
        session = pk.prepare_pruning(model, group("wanda"), dataloader=calibration(batches=1), loss_func=lambda out: out.loss)
    session.close()


def test_a_failed_one_shot_run_in_prepare_pruning_releases_its_session_and_restores_the_model() -> None:
    model = tiny_llama()
    before = snapshot(model)

    def fail(module, args, kwargs):
        raise RuntimeError("simulated failure")

    handle = model.model.layers[2].register_forward_pre_hook(fail, with_kwargs=True)
    with pytest.raises(RuntimeError, match="simulated"):
        pk.prepare_pruning(model, group("sparse_gpt"), dataloader=calibration(batches=1))
    handle.remove()
    assert same(model, before)
    pk.prepare_pruning(model, group("sparse_gpt"), dataloader=calibration(batches=1)).close()  # the layers are free again


def test_prepare_pruning_with_a_dataloader_and_no_one_shot_group_changes_nothing() -> None:
    model = tiny_llama()
    before = snapshot(model)
    with pytest.raises(pk.PruningError, match="needs a one-shot group"):
        pk.prepare_pruning(model, {"pruners": [{"target_sparsity": 0.5}]}, dataloader=calibration(batches=1))
    assert same(model, before)


# ------------------------------------------------------------------------------ devices
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@cuda
def test_a_model_on_cuda_is_pruned_there_like_on_the_cpu() -> None:
    cpu, gpu = tiny_llama(), tiny_llama().cuda()
    pk.oneshot(cpu, group("sparse_gpt"), calibration(), progress=False)
    pk.oneshot(gpu, group("sparse_gpt"), calibration(), progress=False, offload=True)
    for (name, a), b in zip(cpu.named_parameters(), gpu.parameters()):
        assert b.is_cuda
        assert torch.equal(a == 0, b.cpu() == 0) or float(((a == 0) != (b.cpu() == 0)).float().mean()) < 0.01, name


@pytest.mark.cuda
@cuda
def test_a_model_on_the_cpu_can_be_pruned_block_by_block_on_cuda() -> None:
    model = tiny_llama()
    result = pk.oneshot(model, group("wanda", "2:4"), calibration(), progress=False, device="cuda")
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert result.sparsity == pytest.approx(0.5)
