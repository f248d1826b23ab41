"""The `ropelaw` command line: one subcommand per workflow step.

Each subcommand lives in its own module, which defines `add_arguments(parser)`
and `run(args)`; the module is imported only when its subcommand runs, so
`ropelaw predict` starts without importing torch.

User errors (`ropelaw.UserError`) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ropelaw import UserError, __version__

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("ropelaw.theory_cli", "predict d_extra, beta0, beta1-3 and T_extra from the theory"),
    "check-config": ("ropelaw.config", "validate a workflow config and print it resolved"),
    "cell": ("ropelaw.cells", "print the cell (JSON) behind a result path of a config"),
    "plan": ("ropelaw.plan", "every cell's tokens, GPU-hours and wall time on a profile's GPUs, before anything runs"),
    "config-doc": ("ropelaw.config_doc", "print config/README.md, generated from the schema"),
    "fetch-embedded": ("ropelaw.embedded", "build Pile-format shards from the embedded corpora"),
    "build-corpus": ("ropelaw.corpus", "build the 100M-token tuning corpus (Pile substitute) from pinned packages"),
    "train-tokenizer": ("ropelaw.tokenizer", "train a byte-level BPE tokenizer on Pile shards"),
    "pack": ("ropelaw.data", "tokenize Pile shards and pack fixed-length training sequences"),
    "prepare-eval": ("ropelaw.evaldata", "tokenize the long-document evaluation set"),
    "init-model": ("ropelaw.models", "make the untuned model directory of a config model"),
    "convert-gguf": ("ropelaw.sources", "dequantize a GGUF model into a safetensors model directory"),
    "fetch-hub": ("ropelaw.sources", "save a hub model (from_pretrained, when online) as a model directory"),
    "finetune": ("ropelaw.finetune", "train one cell (new rotary base at a tuning length)"),
    "launch": ("ropelaw.launch", "start a training command on every node and GPU of a SLURM job (srun + torchrun)"),
    "evaluate": ("ropelaw.evaluate", "perplexity and accuracy of one cell at every context length"),
    "passkey": ("ropelaw.passkey", "passkey retrieval accuracy of one cell per context length and depth"),
    "law": ("ropelaw.law", "measured vs predicted extrapolation bounds, and the log-log fit"),
    "figures": ("ropelaw.figures", "draw every figure from the result tables"),
    "carry": ("ropelaw.carry", "split a study's inputs into pieces for a machine without network, check and join them"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported to add its arguments."""
    parser = argparse.ArgumentParser(prog="ropelaw", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"ropelaw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module_name)
        if name == command:
            importlib.import_module(module_name).add_arguments(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    module = importlib.import_module(args._module)
    try:
        module.run(args)
    except UserError as err:
        _close_progress_bars()
        print(f"ropelaw {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


def _close_progress_bars() -> None:
    """End the bars a failing step left open (the Trainer's, a refusal mid-run), so the error is a line of its own."""
    std = sys.modules.get("tqdm.std")
    if std is not None:
        for bar in list(std.tqdm._instances):
            bar.close()


if __name__ == "__main__":
    sys.exit(main())
