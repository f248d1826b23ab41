"""ropelaw: scaling laws of RoPE-based extrapolation, as a reproducible workflow.

The package holds all the logic; the Snakemake rules only call its CLI
(`ropelaw --help`). Importing `ropelaw` itself is cheap (no torch), because
Snakemake imports `ropelaw.config` and `ropelaw.theory` while it builds the DAG.
"""

__version__ = "0.1.0"


class UserError(ValueError):
    """Bad input from the user: the message names the key or file and the fix.

    The CLI prints it as one line (no traceback) and exits with status 2.
    """


def json_object(text: str, source: str, fix: str) -> dict:
    """A JSON object given on the command line; bad JSON or another JSON value is one `UserError`
    naming `source` (the option) and the fix."""
    import json

    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{source}: not valid JSON ({err.msg} at character {err.pos}); {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{source}: not a JSON object but {type(data).__name__}; {fix}")
    return data
