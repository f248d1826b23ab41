"""Figures made for reading: every kind draws, files are byte-identical run to run, ticks are readable,
titles do not overlap, a base has one colour everywhere; and the workflow's report holds every figure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from synthetic import study

from ropelaw.cli import main
from ropelaw.figures import KINDS, Tables, beta0_label, draw, figure_names, prefix_rows
from ropelaw.law import join_passkey, load_evals, measure, passkey_table
from ropelaw.plotstyle import base_colors, length_label, log_axis, save

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study_paths(tmp_path_factory) -> tuple[list[str], pd.DataFrame]:
    return study(tmp_path_factory.mktemp("study"), tune_lens=(64, 128))


@pytest.fixture(scope="module")
def tables(study_paths) -> Tables:
    paths, passkey = study_paths
    cells, fit, boot, _ = measure(paths, "segment", 1.25, 100, 0)
    return Tables(prefix_rows(load_evals(paths)), join_passkey(cells, passkey), fit, boot, passkey_table(passkey))


def test_every_kind_draws_and_files_are_byte_identical(tables, tmp_path):
    names = figure_names(tables.cells, tables.passkey)
    assert {"bound_vs_base", "critical_dimension", "ppl_vs_length_tiny_len64", "ppl_vs_length_tiny_len128",
            "passkey_vs_length_tiny_len64", "passkey_heatmap_tiny_base_base10_len64",
            "passkey_heatmap_tiny_base_base1500000_len64_seed2"} <= set(names)
    assert "passkey_heatmap_tiny_base_base1500000_len64" not in names  # a seeded cell has one per seed
    one_per_kind = {args["kind"]: stem for stem, args in names.items()}
    assert sorted(one_per_kind) == sorted(KINDS)
    for kind, stem in one_per_kind.items():
        fig = draw(kind, tables, "test", **{k: v for k, v in names[stem].items() if k != "kind"})
        assert fig.axes and fig.get_suptitle() + fig.axes[0].get_title()
        plt.close(fig)
    runs = [save(draw("bound_vs_base", tables, "test"), [tmp_path / run / f"bound_vs_base.{f}" for f in ("png", "pdf", "svg")])
            for run in ("a", "b")]
    for a, b in zip(*runs):
        assert a.stat().st_size > 1000 and a.read_bytes() == b.read_bytes(), a.name
    assert b"CreationDate" not in (tmp_path / "a/bound_vs_base.pdf").read_bytes()


def _labels(axis) -> list[str]:
    plt.gcf().canvas.draw()
    return [t.get_text() for t in axis.get_ticklabels() if t.get_text() and t.get_visible()
            and axis.get_view_interval().min() <= t.get_position()[axis.axis_name == "y"] <= axis.get_view_interval().max()]


@pytest.mark.parametrize("lo, hi, kind, expected", [
    (85, 112, "value", ["90", "100", "110"]),
    (2048, 131072, "length", ["2K", "4K", "8K", "16K", "32K", "64K", "128K"]),
    (1.5e5, 4.8e6, "base", ["2e5", "5e5", "1e6", "2e6"]),
    (500, 2e6, "base", ["1e3", "1e4", "1e5", "1e6"]),  # one form along the axis: no "10,000" beside "1e5"
    (500, 5e4, "base", ["1,000", "10,000"]),
])
def test_log_axes_have_readable_ticks(lo, hi, kind, expected):
    fig, ax = plt.subplots()
    ax.plot([lo, hi], [lo, hi])
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    log_axis(ax.yaxis, kind)
    assert set(expected) <= set(_labels(ax.yaxis)) and len(_labels(ax.yaxis)) >= 3
    if kind == "base":
        assert len({"e" in label for label in _labels(ax.yaxis)}) == 1, _labels(ax.yaxis)
    plt.close(fig)
    assert [length_label(v) for v in (64, 1536, 8192, 131072, 2**20)] == ["64", "1.5K", "8K", "128K", "1M"]


def test_titles_do_not_overlap_and_greek_is_typeset(tables):
    fig = draw("bound_vs_base", tables, "a study with a rather long name to test the wrapping of titles")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [fig._suptitle.get_window_extent(renderer)] + [ax.title.get_window_extent(renderer) for ax in fig.axes]
    boxes += [ax.get_legend().get_window_extent(renderer) for ax in fig.axes]
    assert len(boxes) == 5
    for i, box in enumerate(boxes):
        assert 0 <= box.x0 and box.x1 <= fig.bbox.width and 0 <= box.y0 and box.y1 <= fig.bbox.height  # inside
        assert not any(box.overlaps(other) for other in boxes[i + 1:])
    labels = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    assert any(r"$T_\mathrm{extra}=2\pi\beta^{d_\mathrm{extra}/d}$" in label for label in labels)
    assert fig.axes[0].get_xlabel() == r"rotary base $\beta$"
    plt.close(fig)


def test_a_base_has_one_colour_in_every_figure(tables):
    colors = base_colors(tables.cells.base)
    fig = draw("ppl_vs_length", tables, "t", model="tiny", tune_len=64)
    lines = {line.get_label(): line.get_color() for ax in fig.axes for line in ax.get_lines()}
    assert lines[r"$\beta$ = 1.5e6"] == colors[1500000] and lines[r"$\beta$ = 10"] == colors[10]
    plt.close(fig)
    fig = draw("critical_dimension", tables, "t")
    lines = {line.get_label(): line.get_color() for line in fig.axes[0].get_lines()}
    assert lines[r"$\beta$ = 1.5e6"] == colors[1500000]
    plt.close(fig)
    assert base_colors([10, 1500000, 150000]) != base_colors([10, 150000])  # by rank within a study


def test_a_tuned_variant_is_drawn_in_the_panel_of_its_base(tables):
    """A variant of kind base (part a's lr1e4 at beta3) sits left of beta0 only; a training-free method in both."""
    evals, cells = tables.evals.copy(), tables.cells.copy()
    variant = evals[(evals.method == "base") & (evals.base == 10) & (evals.tune_len == 64)].assign(method="lr1e4")
    cells = pd.concat([cells, cells[(cells.method == "base") & (cells.base == 10)].assign(method="lr1e4", kind="base")])
    cells["kind"] = cells.get("kind", cells.method).fillna(cells.method)
    fig = draw("ppl_vs_length", Tables(pd.concat([evals, variant]), cells, tables.fit, tables.boot, tables.passkey),
               "t", model="tiny", tune_len=64)
    panels = [[line.get_label() for line in ax.get_lines()] for ax in fig.axes[:2]]  # ppl row: beta <= beta0, beta > beta0
    assert "lr1e4 (" + r"$\beta$ = 10, tuned)" in panels[0] and not any(label.startswith("lr1e4") for label in panels[1])
    assert all("yarn (training-free)" in labels for labels in panels)
    plt.close(fig)


def test_a_base_logn_variant_is_drawn_dotted_in_the_panel_of_its_base(tables):
    """A variant of kind base_logn (part d2's steps600_logn) evaluates a tuned model: one dotted line per base, in
    its base's colour and panel, labelled with log-scaled attention; not a training-free line in both panels."""
    evals, cells = tables.evals.copy(), tables.cells.copy()
    variant = evals[(evals.method == "base") & (evals.base == 10) & (evals.tune_len == 64)].assign(method="again_logn")
    cells = pd.concat([cells, cells[(cells.method == "base") & (cells.base == 10)].assign(method="again_logn",
                                                                                          kind="base_logn")])
    cells["kind"] = cells.get("kind", cells.method).fillna(cells.method)
    fig = draw("ppl_vs_length", Tables(pd.concat([evals, variant]), cells, tables.fit, tables.boot, tables.passkey),
               "t", model="tiny", tune_len=64)
    panels = [{line.get_label(): line for line in ax.get_lines()} for ax in fig.axes[:2]]
    label = "again_logn (" + r"$\beta$ = 10, tuned + log-scaled attention)"
    assert label in panels[0] and not any(name.startswith("again_logn") for name in panels[1])
    assert panels[0][label].get_linestyle() == ":" and panels[0][label].get_color() == base_colors(cells.base)[10]
    plt.close(fig)


def test_a_variant_of_two_bases_draws_one_line_each(tables):
    """Part b1x's figure drew its method steps1000 (beta3 and the control) as one line zig-zagging between the two
    cells, labelled with the first base: a variant of kind base has one line per base, each in its base's colour,
    and only the cells of the figure's tuning length."""
    evals, cells = tables.evals.copy(), tables.cells.copy()
    picked = (evals.method == "base") & evals.base.isin([10, 10000])
    variant = evals[picked].assign(method="steps1000")  # tune lengths 64 and 128
    cells = pd.concat([cells, cells[(cells.method == "base") & cells.base.isin([10, 10000])].assign(
        method="steps1000", kind="base")])
    cells["kind"] = cells.get("kind", cells.method).fillna(cells.method)
    fig = draw("ppl_vs_length", Tables(pd.concat([evals, variant]), cells, tables.fit, tables.boot, tables.passkey),
               "t", model="tiny", tune_len=64)
    colors = base_colors(cells.base)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines() if line.get_label().startswith("steps1000")}
    assert sorted(lines) == ["steps1000 (" + r"$\beta$ = 10, tuned)", "steps1000 (" + r"$\beta$ = 10,000, tuned)"]
    for base, line in zip((10, 10000), (lines["steps1000 (" + r"$\beta$ = 10, tuned)"],
                                        lines["steps1000 (" + r"$\beta$ = 10,000, tuned)"])):
        assert line.get_color() == colors[base]
        want = variant[(variant.base == base) & (variant.tune_len == 64)].sort_values("end")
        assert list(line.get_xdata()) == list(want.end) and list(line.get_ydata()) == list(want.ppl)
    plt.close(fig)


def test_an_empty_panel_says_so(tables):
    """Only bases below beta0 and no untuned or training-free cell: the right panel is empty, and says so."""
    evals = tables.evals[tables.evals.method.eq("base") & tables.evals.base.le(10000)]
    fig = draw("ppl_vs_length", Tables(evals, tables.cells, tables.fit, tables.boot, tables.passkey), "t",
               model="tiny", tune_len=64)
    left, right = fig.axes[:2]
    assert left.get_legend() is not None and right.get_legend() is None
    assert [t.get_text() for t in right.texts] == ["no cell in this panel"] and not left.texts
    plt.close(fig)


def test_passkey_lengths_beyond_the_evaluated_ones_draw(tables):
    """A cell evaluated to 512 with passkey to 1,024: the retrieval-only rows carry no convention."""
    evals = tables.evals[tables.evals.end <= 512].assign(convention="ppl, next token")
    fig = draw("passkey_vs_length", Tables(evals, tables.cells, tables.fit, tables.boot, tables.passkey), "t",
               model="tiny", tune_len=64)
    assert "(ppl, next token)" in fig.get_suptitle()
    plt.close(fig)


def test_a_heatmap_shows_its_own_seed(tables):
    fig = draw("passkey_heatmap", tables, "t", model="tiny", method="base", base=1500000, tune_len=64, seed=0)
    seed0 = [t.get_text() for t in fig.axes[0].texts]
    fig = draw("passkey_heatmap", tables, "t", model="tiny", method="base", base=1500000, tune_len=64, seed=2)
    assert seed0 != [t.get_text() for t in fig.axes[0].texts]  # seed 2 finds the key at 1K, seed 0 does not
    plt.close("all")


def test_bound_vs_base_draws_intervals_and_censored_arrows(tables):
    fig = draw("bound_vs_base", tables, "t")
    ax = fig.axes[0]
    assert len([c for c in ax.collections if type(c).__name__ == "LineCollection"]) >= 3  # error bars
    assert len([a for a in ax.texts if a.arrow_patch is not None]) == 1  # 1e8 never crosses within 2K
    assert any(c.get_label() == "fit: 90% bootstrap band" for c in ax.collections)
    plt.close(fig)


def test_bound_vs_base_without_base_cells_says_so(tables):
    only_variants = tables.cells[tables.cells.method != "base"]
    fig = draw("bound_vs_base", Tables(tables.evals, only_variants, tables.fit, tables.boot, tables.passkey), "t")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) == 1 and "no cell of method 'base'" in texts[0] and "untuned, yarn" in texts[0]
    assert not fig.axes[0].axison
    plt.close(fig)


def test_cli_writes_one_figure_in_each_format(tables, study_paths, tmp_path, capsys):
    for name, table in (("cells", tables.cells), ("fit", tables.fit), ("boot", tables.boot)):
        table.to_csv(tmp_path / f"{name}.csv", index=False)
    common = ["--evals", *study_paths[0], "--cells", str(tmp_path / "cells.csv")]
    out = [tmp_path / "f.png", tmp_path / "f.pdf"]
    assert main(["figures", "bound_vs_base", *common, "--fit", str(tmp_path / "fit.csv"),
                 "--bootstrap", str(tmp_path / "boot.csv"), "--out", *map(str, out)]) == 0
    assert all(p.stat().st_size > 1000 for p in out)
    assert main(["figures", "ppl_vs_length", *common, "--out", str(tmp_path / "g.png")]) == 2
    assert "needs --model --tune-len" in capsys.readouterr().err


def test_report_holds_every_figure_and_table(scenario, tmp_path):
    report = tmp_path / "report.zip"
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(scenario),
                             "--cores", "1", "--report", str(report)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    import zipfile

    names = zipfile.ZipFile(report).namelist()
    figures = sorted(p.name for p in (scenario / "results/figures").glob("*.png"))
    assert figures and all(any(n.endswith(f) for n in names) for f in figures), (figures, names)
    for table in ("cells.csv", "fit.csv", "passkey.csv"):
        assert any(n.endswith(table) for n in names)
    cells = pd.read_csv(scenario / "results/law/cells.csv")
    assert cells.bound_lo.notna().all() and (cells.bound_lo <= cells.bound_hi).all()


def test_a_cell_with_seeds_draws_the_band_of_its_seeds(study_paths, tables):
    """ppl_vs_length: a cell with several seeds gets one band, from its lowest to its highest seed at every length
    (read here from each seed's eval.csv); a cell with one seed gets none; the title says what the bands are."""
    import math

    from matplotlib.collections import PolyCollection

    paths, _ = study_paths
    seeded = [p for p in paths if "_seed" in p and "/base/" in p and "_len64_" in p]
    per_seed = [pd.read_csv(p).query("scope == 'prefix'").set_index("end") for p in seeded]
    assert len(per_seed) >= 2 and len({int(t.base.iloc[0]) for t in per_seed}) == 1
    ppl = pd.DataFrame({i: t.nll_sum / t.tokens for i, t in enumerate(per_seed)}).map(math.exp)
    fig = draw("ppl_vs_length", tables, "test", model="tiny", tune_len=64)
    bands = [c for ax in fig.axes for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2  # perplexity and accuracy, of the one seeded cell
    ys = bands[0].get_paths()[0].vertices[:, 1]
    assert (ys.min(), ys.max()) == (pytest.approx(ppl.min(axis=1).min()), pytest.approx(ppl.max(axis=1).max()))
    assert "bands: lowest to highest of 3 seeds" in fig.get_suptitle()
    plt.close(fig)
    unseeded = Tables(tables.evals[tables.evals.n_seeds == 1], tables.cells)
    fig = draw("ppl_vs_length", unseeded, "test", model="tiny", tune_len=64)
    assert not [c for ax in fig.axes for c in ax.collections if isinstance(c, PolyCollection)]
    assert "bands" not in fig.get_suptitle()
    plt.close(fig)


@pytest.mark.parametrize("beta0, label", [(304201.6954087435, "304,201.7"), (1e6, "1,000,000"), (9.96, "10.0")])
def test_beta0_is_labelled_to_one_decimal(beta0, label):
    """A cell at floor(beta0) sits in the panel "beta <= beta0"; a title rounding beta0 up (304,202) would not say why."""
    assert beta0_label(beta0) == label
