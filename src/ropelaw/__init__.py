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
