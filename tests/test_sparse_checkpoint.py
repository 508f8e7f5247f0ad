"""Compact sparse checkpoints: bit-exact round trips, bytes saved, refusals that leave the model as it was."""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.cli import main as cli_main
from prunekit.sparse_checkpoint import SPARSE_FILE, SparseCheckpointError, pack_bits, unpack_bits

safetensors_torch = pytest.importorskip("safetensors.torch")


def pruned_mlp(pattern: str, target: float, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A model pruned by prunekit itself, then cast: zeros exactly where the pattern put them."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(96, 128), act=nn.ReLU(), fc2=nn.Linear(128, 64), bn=nn.BatchNorm1d(64), head=nn.Linear(64, 3)))
    config = {"pruners": [{"name": "g", "op_types": ["Linear"], "excluded_op_names": ["^head$"], "pattern": pattern,
                           "target_sparsity": target, "scheduler": {"type": "oneshot"}}]}
    session = pk.Pruning(model, config)
    session.prune_now()
    session.finalize()
    return model.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pattern,target", [("1x1", 0.8), ("4x1", 0.5), ("2:4", 0.5)])
def test_round_trip_is_bit_exact_and_smaller(tmp_path, pattern, target, dtype):
    model = pruned_mlp(pattern, target, dtype)
    stats = pk.save_sparse(model, tmp_path)
    assert stats.path == tmp_path / SPARSE_FILE
    # the pruned weights, and the batch norm's all-zero bias and running mean; the head and biases stay dense
    assert set(stats.compacted) == {"fc1.weight", "fc2.weight", "bn.bias", "bn.running_mean"}
    decoded = pk.load_sparse(tmp_path)
    original = model.state_dict()
    assert list(decoded) == list(original)
    for name, tensor in original.items():
        assert decoded[name].dtype == tensor.dtype and torch.equal(decoded[name], tensor), name
    # bytes: each compacted tensor costs its kept values plus one bit per element
    item = torch.finfo(dtype).bits // 8
    expected = sum(
        (int((t != 0).sum()) * item + math.ceil(t.numel() / 8)) if n in stats.compacted else t.numel() * t.element_size()
        for n, t in original.items()
    )
    header = stats.file_bytes - expected
    assert 0 < header < 8192  # the rest of the file is the safetensors header (names, layout)
    assert stats.dense_bytes == sum(t.numel() * t.element_size() for t in original.values())
    assert stats.saved_bytes == stats.dense_bytes - stats.file_bytes > 0
    assert "stored as bitmask + values" in str(stats)


def test_loads_into_a_plain_model_that_then_computes_the_same(tmp_path):
    model = pruned_mlp("1x1", 0.9).eval()
    pk.save_sparse(model, tmp_path / "m.safetensors")
    torch.manual_seed(1)
    fresh = nn.Sequential(OrderedDict(fc1=nn.Linear(96, 128), act=nn.ReLU(), fc2=nn.Linear(128, 64), bn=nn.BatchNorm1d(64), head=nn.Linear(64, 3))).eval()
    pk.load_sparse(tmp_path / "m.safetensors", into=fresh)
    x = torch.randn(5, 96)
    assert torch.equal(fresh(x), model(x))
    assert fresh.bn.num_batches_tracked.dtype == torch.long  # integer buffers stored as they are


def test_tied_weights_are_stored_once(tmp_path):
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 16)
            self.out = nn.Linear(16, 50, bias=False)
            self.out.weight = self.embed.weight

    model = Tied()
    with torch.no_grad():
        model.embed.weight[::2] = 0
    stats = pk.save_sparse(model, tmp_path / "t.safetensors")
    assert stats.aliases == ["out.weight"] and stats.compacted == ["embed.weight"]
    fresh = Tied()
    pk.load_sparse(tmp_path / "t.safetensors", into=fresh)
    assert torch.equal(fresh.embed.weight, model.embed.weight) and fresh.out.weight is fresh.embed.weight


def test_views_sharing_memory_are_stored_separately(tmp_path):
    base = torch.randn(4, 8)
    base[:, :4] = 0
    stats = pk.save_sparse({"a": base[:2], "b": base[2:]}, tmp_path / "v.safetensors")
    decoded = pk.load_sparse(tmp_path / "v.safetensors")
    assert torch.equal(decoded["a"], base[:2]) and torch.equal(decoded["b"], base[2:]) and not stats.aliases


def test_bits_pack_and_unpack():
    bits = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0], dtype=torch.bool)
    packed = pack_bits(bits)
    assert packed.tolist() == [0b10000001, 0b11000000]
    assert torch.equal(unpack_bits(packed, 11), bits)


def test_a_model_that_does_not_fit_is_left_unchanged(tmp_path):
    model = pruned_mlp("1x1", 0.5)
    pk.save_sparse(model, tmp_path / "m.safetensors")
    other = nn.Sequential(OrderedDict(fc1=nn.Linear(96, 128), act=nn.ReLU(), fc2=nn.Linear(128, 32), bn=nn.BatchNorm1d(32), head=nn.Linear(32, 3)))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(SparseCheckpointError, match=r"fc2.weight: file \(64, 128\), model \(32, 128\).*left unchanged"):
        pk.load_sparse(tmp_path / "m.safetensors", into=other)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_damaged_or_foreign_files_are_refused(tmp_path):
    model = pruned_mlp("1x1", 0.5)
    path = tmp_path / "m.safetensors"
    pk.save_sparse(model, path)
    with safetensors_torch.safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    short = {**tensors, "fc1.weight::values": tensors["fc1.weight::values"][:-1]}
    safetensors_torch.save_file(short, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(SparseCheckpointError, match=r"'fc1.weight'.*values for a bitmask with"):
        pk.load_sparse(tmp_path / "bad.safetensors")
    layout = json.loads(metadata["layout"])
    layout["fc2.weight"]["encoding"] = "zstd"
    safetensors_torch.save_file(tensors, str(tmp_path / "bad2.safetensors"), metadata={**metadata, "layout": json.dumps(layout)})
    with pytest.raises(SparseCheckpointError, match=r"'fc2.weight': unknown encoding 'zstd'"):
        pk.load_sparse(tmp_path / "bad2.safetensors")
    safetensors_torch.save_file({"w": torch.ones(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(SparseCheckpointError, match="not a compact prunekit checkpoint"):
        pk.load_sparse(tmp_path / "plain.safetensors")
    with pytest.raises(SparseCheckpointError, match=r"\.safetensors file"):
        pk.save_sparse(model, tmp_path / "m.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors", "bad2.safetensors", "m.safetensors", "plain.safetensors"]


def test_cli_compress_and_report_read_it(tmp_path, capsys):
    model = pruned_mlp("4x1", 0.75)
    torch.save(model.state_dict(), tmp_path / "pruned.pt")
    assert cli_main(["compress", str(tmp_path / "pruned.pt")]) == 0
    out = capsys.readouterr().out
    assert f"{SPARSE_FILE}: 11 tensors, 4 stored as bitmask + values" in out and "saved" in out
    assert cli_main(["compress", str(tmp_path / "pruned.pt")]) == 1  # exists: not overwritten without --force
    assert "--force" in capsys.readouterr().err
    assert cli_main(["report", str(tmp_path / SPARSE_FILE)]) == 0
    report = capsys.readouterr().out
    assert "fc1    128x96  75.00%    4x1" in report
