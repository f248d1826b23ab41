"""The grid: a validated config's `grid:` blocks expanded into `Cell`s.

Each block gives every (base, tuning length, seed) of its lists one cell of its
method; a cell produced by several blocks is one cell (evaluated at the union of
their lengths, `ropelaw.lengths`). A method is a built-in (`ropelaw.methods`) or a
variant named in `methods:` with a `kind`. Geometry (d, T_train, β₀) comes from the
config or the model's own files. Imports no torch.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ropelaw import UserError, lengths, methods, paths, sources, theory
from ropelaw.cells import NAME_MAX, UNTUNED, Cell, longest_name

EMBEDDED_DIR = "resources/embedded"  # shards below it are built by the workflow (rule fetch_embedded)
CORPUS_DIR = "resources/corpus"  # the tuning corpus, built by the workflow (rule build_corpus)
BUILT_DIRS = (EMBEDDED_DIR, CORPUS_DIR)  # shards below these need not exist before a run
Key = tuple[str, str, int, int, "int | None"]  # model, method, base, tune_len, seed


@dataclass(frozen=True)
class Geometry:
    """What the theory needs to know of a model."""

    head_dim: int
    train_len: int
    orig_base: float


@cache
def _read_geometry(model: str, source: str, path: str | None, package: str | None,
                   hub_id: str | None, revision: str | None) -> tuple[int, int, float]:
    """(head_dim, T_train, b0) as the model's own files give them (cached: GGUF and hub reads)."""
    spec, key = {"path": path, "package": package, "id": hub_id, "revision": revision}, f"models.{model}"
    fix = f"give all of {key}.head_dim, {key}.train_len and {key}.rope_base (then the model's files are not read)"
    if source == "gguf":
        return sources.gguf_geometry(sources.locate_gguf(spec, key), fix)
    if source == "hub":
        return theory.model_geometry(sources.hub_config(spec, key), fix)
    return theory.model_geometry(Path(path) / "config.json", fix)


def geometry(cfg: dict, model: str) -> Geometry:
    """head_dim, T_train and original base of a config model (config values override the model's)."""
    spec = cfg["models"][model]
    if spec["source"] == "scratch":
        for key in ("train_len", "rope_base"):
            if spec[key] is None:
                raise UserError(f"config key 'models.{model}.{key}' is required for a scratch model")
        return Geometry(spec["architecture"]["head_dim"], spec["train_len"], float(spec["rope_base"]))
    if all(spec[key] is not None for key in ("head_dim", "train_len", "rope_base")):
        return Geometry(spec["head_dim"], spec["train_len"], float(spec["rope_base"]))
    head_dim, train_len, orig_base = _read_geometry(
        model, spec["source"], spec["path"], spec["package"], spec["id"], spec["revision"]
    )
    return Geometry(head_dim, spec["train_len"] or train_len, float(spec["rope_base"] or orig_base))


def untuned_dir(cfg: dict, model: str) -> str:
    """The model before any base change: pretrained by us, the user's directory, or a hub/GGUF import."""
    spec = cfg["models"][model]
    if spec["source"] == "hf_dir":
        return spec["path"]
    return paths.UNTUNED[spec["source"]].format(model=model)


def tokenizer_dir(cfg: dict, model: str) -> str:
    """The tokenizer a model's data is made with: trained here for a scratch model, else the model's own."""
    scratch = cfg["models"][model]["source"] == "scratch"
    return paths.TOKENIZER.format(model=model) if scratch else untuned_dir(cfg, model)


def pretrain_rows_dir(cfg: dict, model: str) -> str:
    return paths.TRAIN_ROWS.format(model=model, length=cfg["models"][model]["train_len"])


# --- methods and their variants -----------------------------------------------------------------
def variants(cfg: dict) -> dict[str, dict]:
    """The `methods:` entries that are not built-in methods' option blocks: name -> entry (with `kind`)."""
    return {name: entry for name, entry in cfg["methods"].items() if "kind" in entry}


def method_names(cfg: dict) -> list[str]:
    """Every name the `{method}` level of a result path may take: built-ins, then the config's variants."""
    return list(methods.NAMES) + list(variants(cfg))


def kind_of(cfg: dict, method: str) -> str:
    entry = variants(cfg).get(method)
    return entry["kind"] if entry else method


def method_options(cfg: dict, method: str) -> dict:
    """The options a method reads, defaults filled: a variant's entry, or the built-in block ({} for none)."""
    kind = kind_of(cfg, method)
    key = methods.options_key(kind)
    defaults = dict(methods.DEFAULT_OPTIONS.get(key, {})) if key else {}
    if method in variants(cfg):
        return {**defaults, **{k: v for k, v in cfg["methods"][method].items() if k != "kind"}}
    return dict(cfg["methods"][key]) if key else {}


def check_variants(cfg: dict) -> None:
    for name, entry in variants(cfg).items():
        if name in methods.NAMES:
            raise UserError(f"config key 'methods.{name}': {name} is a built-in method; give the variant another name")
        if entry["kind"] not in methods.KINDS or entry["kind"] == UNTUNED:
            kinds = [k for k in methods.KINDS if k != UNTUNED]
            raise UserError(f"config key 'methods.{name}.kind': {entry['kind']!r} is not a method; choose one of {', '.join(kinds)}")
        if entry["kind"] not in methods.NAMES:
            continue  # split checks its own options (methods.resolve)
        key = methods.options_key(entry["kind"])
        allowed = set(methods.DEFAULT_OPTIONS.get(key, {})) if key else set()
        if entry["kind"] == "base_logn":
            allowed.add("tuned")
        stray = sorted(set(entry) - allowed - {"kind"})
        if stray:
            raise UserError(f"config key 'methods.{name}.{stray[0]}' is not an option of kind {entry['kind']}; "
                            f"its options: {', '.join(sorted(allowed)) or 'none'}")
        # kind base only: a split model's frequencies are not in its config, and base_logn's spec would not restore them
        if "tuned" in entry and kind_of(cfg, str(entry["tuned"])) != "base":
            tuned = ["base"] + [m for m, e in variants(cfg).items() if e["kind"] == "base"]
            raise UserError(f"config key 'methods.{name}.tuned' is {entry['tuned']!r}: it names the method whose "
                            f"fine-tuned models the variant evaluates; choose base or a variant of kind base: "
                            f"{', '.join(tuned)}")


# --- the grid -------------------------------------------------------------------------------------
def _check_name_length(key: Key, where: str) -> None:
    """Refuse, naming config key `where`, a cell whose file names would pass the file-system limit
    (a base near 1e300 has 301 digits), before anything runs rather than at its first write."""
    name = longest_name(*key)
    size = len(name.encode())
    if size <= NAME_MAX:
        return
    model, method, base = key[:3]
    shortest = len(longest_name(model, method, 1, *key[3:]).encode())  # the same cell with a one-digit base
    if shortest > NAME_MAX:  # no base helps: the names are too long
        clip = lambda text: text if len(text) <= 24 else text[:24] + "..."  # noqa: E731
        raise UserError(f"config key '{where}': model '{clip(model)}' and method '{clip(method)}' make file names "
                        f"of {shortest}+ bytes ({name[:32]}...{name[-24:]}), over the {NAME_MAX}-byte limit of a "
                        f"file name, whatever the base; give the model (models:) or the method (methods:) a shorter name")
    raise UserError(f"config key '{where}': base {base:.4g} makes file names of {size} bytes "
                    f"({name[:32]}...{name[-24:]}), over the {NAME_MAX}-byte limit of a file name; give a smaller base")


def _block_method(cfg: dict, i: int, block: dict) -> str:
    names = [m for m in method_names(cfg) if m != UNTUNED]
    if block["method"] not in names:
        close = difflib.get_close_matches(block["method"], names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"config key 'grid[{i}].method': {block['method']!r} is neither a method nor a "
                        f"variant of 'methods'{hint}; choose one of {', '.join(names)}")
    return block["method"]


def _block_keys(cfg: dict, i: int, block: dict) -> list[Key]:
    """The cells (by identity) that grid block i produces."""
    model, method = block["model"], _block_method(cfg, i, block)
    geo, kind = geometry(cfg, model), kind_of(cfg, method)
    if kind in methods.TRAINING_FREE:  # seeds are ignored: nothing is trained
        given = [k for k in ("tune_lengths", "bases") if block.get(k)] + (["finetune"] if block["finetune"] else [])
        if given:
            raise UserError(
                f"config key 'grid[{i}]': method {method} is training-free (it evaluates the untuned "
                f"model at base{round(geo.orig_base)}_len{geo.train_len}); remove {', '.join(given)}"
            )
        key = (model, method, round(geo.orig_base), geo.train_len, None)
        _check_name_length(key, f"models.{model}.rope_base")
        return [key]
    for key in ("tune_lengths", "bases"):
        if not block.get(key):
            raise UserError(f"config key 'grid[{i}].{key}' is required for method {method}")
    if kind not in methods.TRAINED and block["finetune"]:
        raise UserError(
            f"config key 'grid[{i}].finetune': method {method} trains nothing (it evaluates the "
            "`base` cell's model with log-scaled attention); put the overrides on the base block"
        )
    if "seeds" in block and "seed" in block["finetune"]:
        raise UserError(f"config key 'grid[{i}].finetune.seed': the block also lists 'seeds'; keep one of them")
    keys = []
    for tune_len in block["tune_lengths"]:
        seen: dict[int, int] = {}
        for j, spec in enumerate(block["bases"]):
            try:
                base = theory.resolve_base(spec, geo.head_dim, geo.train_len, tune_len, geo.orig_base)
            except UserError as err:
                raise UserError(f"config key 'grid[{i}].bases[{j}]': {err}") from None
            if base in seen:
                raise UserError(f"config key 'grid[{i}].bases[{j}]': {spec!r} is base {base} at tune length "
                                f"{tune_len}, as bases[{seen[base]}] ({block['bases'][seen[base]]!r}) is: one cell; "
                                "remove one of them")
            seen[base] = j
            for seed in block.get("seeds", [None]):
                keys.append((model, method, base, tune_len, seed))
                _check_name_length(keys[-1], f"grid[{i}].bases[{j}]")
    return keys


def memberships(cfg: dict) -> dict[Key, list[int]]:
    """Every cell's identity with the grid blocks that produce it, untuned cells first, in config order."""
    out: dict[Key, list[int]] = {}
    if cfg["evaluation"]["include_untuned"]:
        for model in dict.fromkeys(block["model"] for block in cfg["grid"]):
            geo = geometry(cfg, model)
            key = (model, UNTUNED, round(geo.orig_base), geo.train_len, None)
            _check_name_length(key, f"models.{model}.rope_base")
            out[key] = []
    for i, block in enumerate(cfg["grid"]):
        for key in _block_keys(cfg, i, block):
            blocks = out.setdefault(key, [])
            if i not in blocks:
                blocks.append(i)
    return out


def training(cfg: dict, key: Key, blocks: list[int]) -> dict:
    """A trained cell's fine-tuning spec: global, then model, then its blocks' overrides (which must agree)."""
    model, method, base, tune_len, seed = key
    overrides = {i: cfg["grid"][i]["finetune"] for i in blocks}
    first = blocks[0]
    for i in blocks[1:]:
        if overrides[i] != overrides[first]:
            raise UserError(
                f"config keys 'grid[{first}].finetune' and 'grid[{i}].finetune' differ, and both blocks produce "
                f"results/{model}/{method}/base{base}_len{tune_len}; give the cell one set of overrides"
            )
    args = {**cfg["finetune"], **cfg["models"][model]["finetune"], **overrides[first]}
    return args if seed is None else {**args, "seed": seed}


def build(cfg: dict) -> list[Cell]:
    """Every cell of a validated config."""
    check_variants(cfg)
    member = memberships(cfg)
    out = []
    for key, blocks in member.items():
        model, method, base, tune_len, seed = key
        geo, kind = geometry(cfg, model), kind_of(cfg, method)
        out.append(Cell(
            model, method, base, tune_len, seed, kind=kind, head_dim=geo.head_dim, train_len=geo.train_len,
            orig_base=geo.orig_base, eval_set=cfg["data"]["eval"]["name"], method_options=method_options(cfg, method),
            eval_lengths=tuple(lengths.eval_lengths(cfg, blocks)), untuned_dir=untuned_dir(cfg, model),
            training=training(cfg, key, blocks) if kind in methods.TRAINED else None,
        ))
        lengths.check_cell(cfg, out[-1], blocks)
    for cell in out:
        if cell.tuned_method and (cell.model, cell.tuned_method, cell.base, cell.tune_len, cell.seed) not in member:
            raise UserError(
                f"cell {cell.path} evaluates the fine-tuned model {cell.model_dir}; add base {cell.base} at tune "
                f"length {cell.tune_len}{'' if cell.seed is None else f' with seed {cell.seed}'} to a "
                f"`method: {cell.tuned_method}` block of 'grid'"
            )
    return out
