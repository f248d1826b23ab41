"""The evaluation-length policy: which lengths a cell is evaluated (and asked for a passkey) at.

A cell takes the `eval_lengths` of every grid block that produces it, or
`evaluation.lengths` for a block without them (and for the untuned cell, which no
block produces); it is evaluated at the sorted union, on rows of its longest length.
`passkey.lengths: null` means each cell's own evaluation lengths. Imports no torch.
"""

from __future__ import annotations

from ropelaw import UserError


def require_increasing(key: str, values: list[int]) -> None:
    if values != sorted(set(values)):
        raise UserError(
            f"config key '{key}' must be strictly increasing, without repeats (got {values}); sort it and drop the repeats"
        )


def sources(cfg: dict, blocks: list[int]) -> dict[str, list[int]]:
    """The config keys that give a cell produced by `blocks` its evaluation lengths, with their lists."""
    out = {}
    for i in blocks:
        block = cfg["grid"][i]
        if "eval_lengths" in block:
            out[f"grid[{i}].eval_lengths"] = block["eval_lengths"]
        else:
            out["evaluation.lengths"] = cfg["evaluation"]["lengths"]
    return out or {"evaluation.lengths": cfg["evaluation"]["lengths"]}


def eval_lengths(cfg: dict, blocks: list[int]) -> list[int]:
    """The context lengths of a cell produced by `blocks`: the sorted union of their lists."""
    return sorted(set().union(*sources(cfg, blocks).values()))


def check_lists(cfg: dict) -> None:
    """Every length list of the config is strictly increasing; the passkey templates hide the key once."""
    require_increasing("evaluation.lengths", cfg["evaluation"]["lengths"])
    for i, block in enumerate(cfg["grid"]):
        if "eval_lengths" in block:
            require_increasing(f"grid[{i}].eval_lengths", block["eval_lengths"])
    edges = cfg["evaluation"]["bucket_edges"]
    if edges is not None:
        require_increasing("evaluation.bucket_edges", edges)
    if cfg["passkey"]["lengths"] is not None:
        require_increasing("passkey.lengths", cfg["passkey"]["lengths"])
    for name in ("prefix", "question"):  # as ropelaw.passkey.PasskeySpec (which imports torch) refuses them
        if "{key}" in cfg["passkey"][name]:
            raise UserError(f"config key 'passkey.{name}' contains {{key}}, which only passkey.needle may hold "
                            f"(the key is hidden there); remove it from passkey.{name}")


def check_cell(cfg: dict, cell, blocks: list[int]) -> None:
    """A cell's lengths reach down to its tuning length, and its passkey prompts fit its rows."""
    if not any(length <= cell.tune_len for length in cell.eval_lengths):
        keys = list(sources(cfg, blocks))
        raise UserError(
            f"config key{'s' * (len(keys) > 1)} {' and '.join(repr(k) for k in keys)}: {cell.path} is evaluated "
            f"at {list(cell.eval_lengths)}, without a length <= {cell.tune_len} (its tuning length); add one: "
            "the law compares perplexity with its value there"
        )
    asked = cfg["passkey"]["lengths"]
    if cfg["passkey"]["enabled"] and asked is not None and asked[-1] > cell.eval_lengths[-1]:
        keys = " and ".join(sources(cfg, blocks))
        raise UserError(
            f"config key 'passkey.lengths': {asked[-1]} exceeds the longest of {keys} ({cell.eval_lengths[-1]}), "
            f"the length of the evaluation rows of {cell.path} that the filler comes from; "
            "lower it, or leave passkey.lengths null (every cell's own evaluation lengths)"
        )
    shortest, floor = (asked or cell.eval_lengths)[0], template_floor(cfg["passkey"])
    if cfg["passkey"]["enabled"] and shortest < floor:
        key = "passkey.lengths" if asked else f"{' and '.join(sources(cfg, blocks))} (passkey.lengths is null)"
        raise UserError(
            f"config key '{key}': {shortest} tokens cannot hold a passkey prompt of {cell.path}, which needs at least "
            f"{floor} (a token per word of passkey.prefix, needle and question, and one of "
            "filler); drop the length or shorten the templates"
        )


def template_floor(passkey: dict) -> int:
    """At least how many tokens a passkey prompt holds besides its filler, plus one token of filler: one per
    whitespace-separated word of passkey.prefix, the needle (a key in place) and passkey.question. The
    tokenizers of this workflow (byte-level BPE split into words first, as GPT-2's, LLaMA's and SmolLM2's; the
    word-level test ones) never put two words in one token. The exact count needs the tokenizer, which the
    passkey job has: it refuses a length the templates do not fit before loading the model."""
    needle = passkey["needle"].replace("{key}", "1" * passkey["key_digits"])
    return sum(len(text.split()) for text in (passkey["prefix"], needle, passkey["question"])) + 1


def passkey_args(cfg: dict, cell) -> dict:
    """A cell's passkey block as `ropelaw passkey --spec` takes it: lengths resolved, `enabled` left out."""
    args = {key: value for key, value in cfg["passkey"].items() if key != "enabled"}
    if args["lengths"] is None:
        args["lengths"] = list(cell.eval_lengths)
    return args
