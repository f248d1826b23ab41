"""How every figure looks: one colour per base, readable log axes, mathtext labels, byte-identical files.

Split from `ropelaw.figures` (which draws): these helpers hold the conventions every figure
shares, so a base has the same colour in every figure of a study and a length axis reads
2K, 8K, 128K wherever it appears.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

from ropelaw import provenance  # noqa: E402

BETA, BETA0, PI = r"$\beta$", r"$\beta_0$", r"$\pi$"
T_TRAIN, T_TUNE = r"$T_\mathrm{train}$", r"$T_\mathrm{tune}$"
T_EXTRA = r"$T_\mathrm{extra}=2\pi\beta^{d_\mathrm{extra}/d}$"  # no spaces: title wrapping never splits it
# Fixed metadata: no creation dates, so a re-run writes the same bytes.
METADATA = {"pdf": {"CreationDate": None, "ModDate": None}, "svg": {"Date": None}, "png": {}}
plt.rcParams["svg.hashsalt"] = "ropelaw"


def base_colors(bases) -> dict[int, tuple]:
    """One colour per base of the study, ordered from small (blue) to large (red), the same in every figure."""
    bases = sorted({int(b) for b in bases})
    cmap = plt.get_cmap("turbo")
    spots = np.linspace(0.08, 0.92, len(bases)) if len(bases) > 1 else [0.08]
    return {base: cmap(spot) for base, spot in zip(bases, spots)}


def base_label(base: float, scientific: bool | None = None) -> str:
    """20, 10,000 below 1e5; 1.5e5, 1e6 above (`scientific` forces one form: 5e2, 1e4)."""
    base = int(base)
    if not (base >= 100000 if scientific is None else scientific):
        return f"{base:,}"
    mantissa, exponent = f"{base:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def length_label(value: float, _pos=None) -> str:
    """Token counts as people write them: 64, 1.5K, 128K, 1M (K = 1024)."""
    if value >= 2**20:
        return f"{value / 2**20:.3g}M"
    if value >= 1024:
        return f"{value / 1024:.3g}K"
    return f"{value:.3g}"


def _value_label(value: float, _pos=None) -> str:
    if value >= 1e5:
        return base_label(value)
    return f"{int(value):,}" if value == int(value) else f"{value:.3g}"


def log_axis(axis, kind: str) -> None:
    """Readable ticks on a log axis after its limits are set: `length` (powers of two, 2K/8K),
    `base` (1e5, 2e5, ...) or `value` (plain numbers); never fewer than three labels in view."""
    lo, hi = sorted(axis.get_view_interval())
    if kind == "length" and hi / lo >= 8:
        locator = ticker.LogLocator(base=2, numticks=12)
    elif hi / lo >= 1000:
        locator = ticker.LogLocator(base=10, numticks=10)
    elif hi / lo >= 30:
        locator = ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12)
    else:  # less than 1.5 decades: evenly spaced round numbers read best
        nice = ticker.MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
        locator = ticker.FixedLocator([v for v in nice if lo <= v <= hi and v > 0])
    axis.set_major_locator(locator)
    if kind == "base":  # one form along the axis: 500, 10,000 or 5e2, 1e4, 1e6, never both
        formatter = ticker.FuncFormatter(lambda value, _pos=None: base_label(value, scientific=hi >= 1e5))
    else:
        formatter = ticker.FuncFormatter(length_label if kind == "length" else _value_label)
    axis.set_major_formatter(formatter)
    axis.set_minor_formatter(ticker.NullFormatter())


def wrap(lines: list[str], width_in: float, fontsize: float = 10) -> str:
    """Lines wrapped to a width in inches (about 120 / fontsize characters per inch)."""
    width = int(width_in * 120 / fontsize)
    return "\n".join(textwrap.fill(line, width=width, break_long_words=False) for line in lines)


def suptitle(fig, lines: list[str], width_in: float) -> None:
    """A figure title of several lines, each wrapped to the figure's width."""
    fig.suptitle(wrap(lines, width_in), fontsize=10)


def new_figure(rows: int, cols: int, size: tuple[float, float], **kwargs):
    """A figure with constrained layout (titles never overlap) and an [rows, cols] array of axes."""
    return plt.subplots(rows, cols, figsize=size, squeeze=False, layout="constrained", **kwargs)


def save(fig, paths: list[str | Path]) -> list[Path]:
    """Write `fig` once per path, its format from the suffix, with fixed metadata."""
    written = []
    for path in map(Path, paths):
        fmt = path.suffix.lstrip(".")
        with provenance.atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, metadata=METADATA.get(fmt, {}))
        written.append(path)
    plt.close(fig)
    return written


def interval_text(value: float, lo: float, hi: float, digits: int = 2) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
