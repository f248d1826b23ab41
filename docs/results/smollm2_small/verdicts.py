"""The decision rules of PLAN.md section 3 as a command: a part's verdicts from its published tables.

    python docs/results/smollm2_small/verdicts.py PART RESULTS_DIR [--other DIR] [--csv FILE]
    python docs/results/smollm2_small/verdicts.py claims [STUDY_DIR] [--csv FILE]

PART is a, b1, b2, b1x, b2x, c, d, d2 or e (b1x and b2x: PLAN.md's amendment 1, the b rules on the
`steps1000` cells; d2: amendment 2, part d with a control tuned the same way, on the `steps600` cells;
e: amendment 3, 500 tuned 900 steps at 16K, the `steps900` cells, against d2's control).
RESULTS_DIR is the part's published folder, as PLAN.md section 7 says
(`study.tgz` unpacked into docs/results/smollm2_small/part_X/), with the layout of
docs/results/smollm2_law: `cells/<method>/<leaf>/{eval.csv,passkey.csv}` (the tarball's
`results/smollm2/`), `law/cells.csv` (its `results/law/`) and `logs/finetune/smollm2/<method>/<leaf>.log`.
Rules that read another part (b1 with b2, b1x with b2x, d with b1's control) read `--other DIR`, by
default the sibling folder `RESULTS_DIR/../part_b2` (for b1), `part_b1` (for b2 and d), `part_b2x` (for
b1x), `part_b1x` (for b2x), `part_d2` (for e). Every claim gives one
row: the numbers its rule reads, the threshold, the verdict word of PLAN.md. An input that is not
there (a cell not run, a length not evaluated) gives "not tested (missing: FILE ...)". A part published
unfinished (`gpu_study.sh publish` with PUBLISH_UNFINISHED=1 leaves PART/UNFINISHED) is named in the note of
every row that reads it.
Output: a markdown table on stdout; `--csv FILE` writes the same rows.
`claims`: each claim of issue 15 (CLAIMS below), the verdict of every rule that judges it, read from the
published parts' verdicts.csv ("not run" for a part not published), a count of verdicts per claim, and the
tokens each fine-tuned cell trained on, from the model manifests that `gpu_study.sh pack` publishes.

Written before any part ran. The thresholds are in THRESHOLDS below, each with its PLAN.md line.
Where PLAN.md leaves a choice, the literal reading is taken:
- Perplexity at L: the `prefix` row of eval.csv with start 0 and end L (pooled over the cell's rows).
- Thresholds are the numbers PLAN.md prints in bold (2.7, 5.6, 3.2, 10.1), not the products
  they round (2.67, 5.60, 3.15, 10.14); the C ranges are [1.2, 1.6] x the predicted bound, exact.
- Part a, "within 5% of each other": the larger perplexity <= 1.05 x the smaller. lr* is the
  smallest learning rate (of the runs kept) within 5% of the lowest perplexity. Its expectation
  "3e-4 or 1e-3 gives the lowest value" reads the lowest perplexity itself, not lr*. "The untuned
  model's (12.55)" reads the untuned cell of the part (12.55 is its value in the law study).
  Divergence: the `{'loss': ...}` lines of the fine-tune log; the first and the last of them.
- Parts b1/b2: each part judges its own small base (b1: beta3 = 1304, b2: 500) against its own
  control. "B1, order" and the controls' spread need both parts. Spread = |a - b| / min(a, b);
  when > 2% it is stated in the `note` of every row that compares with a control (the
  precondition, B2, B4). B2 with a tie (equal perplexity) is "unsettled". B4 counts prompts:
  "within 2/10" is |small - control| <= 2/10, "at most (control - 5)/10" in accuracy.
  A base that is not adapted gets "not tested (flat but not adapted)" on B1-B4, the words of PLAN.md.
  Reported with no rule (written after b1x, PLAN.md): each cell's ppl_8K against the untuned model's on the
  same scored tokens, part a's untuned cell on its window 0, read only where both parts' first evaluation
  row is the same text (shard sha256, line, offset, tokenizer) and the 8K prefix counts the same tokens.
  Reported with no rule (written after b2x, PLAN.md): the small base against the control on the tuning corpus,
  their mean logged training loss over the last 5 logs (50 steps) of the first epoch, where every row is read
  for the first time, and exp of the gap (the ratio of their in-distribution perplexities at T_tune).
- Part c: the bound is law/cells.csv's `measured_bound` (segment rule), C its `measured_bound /
  predicted_bound`. A censored bound (right: at least; left: at most) disagrees only when the
  censoring already puts it outside the range; otherwise the claim is "unsettled". C2's "none
  grows with beta beyond one grid step": no bound of a larger base above 2^(1/4) x that of a smaller
  base; it disagrees only as PLAN.md says (a bound outside the range, or 304,201's > 1.19 x 1e5's),
  any other failure is "unsettled". C3's "falls" means strictly.
- Part d: the bug check compares every eval.csv row with end <= 16,384 (nll_sum, tokens, ppl) of
  `base` and `base_logn` as the text written; if they differ, D1 and D2 are "not tested (bug ...)".
  D1 disagrees only if `base_logn` is higher at 1M; a lower 1M with a steeper rise is "unsettled".
  D3 has no rule: "reported (no rule)", against b1's control as in B4.
- Part d2 (amendment 2, written before it ran): the precondition is 3.2's (500's ppl_8K <= 1.5 x the ppl_8K of
  the control tuned with it at 16K); d's first threshold (10.1) is reported beside it. The bug check, D1 and D2
  are d's, on steps600 and steps600_logn, and are judged whether or not 500 is adapted; when it is not, their
  note says so. B2 at 16K is B2's rule on this part's cells. D3 is B4's rule against this control, at the
  lengths <= T_tune = 16K.
- Part e (amendment 3, written before it ran): d2's rules on steps900 and steps900_logn, with part d2's
  published control (steps600, 1e5) as the control: the precondition is 500's ppl_8K <= 1.5 x that control's;
  B2 and D3 read that control. The in-distribution row compares 500's last 5 first-epoch logs with the
  control's in d2 (other rows, other steps: "unpaired").
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from ropelaw.cells import UNTUNED, leaf

# Every threshold of the rules, with the PLAN.md line that sets it (section 3).
THRESHOLDS = {
    "a_within": 0.05,         # 3.1 "When two learning rates are within 5% of each other, the smaller one wins."
    "a_lr_shipped": 3e-4,     # 3.1 "If lr* != 3e-4 (the value shipped)"
    "a_slow_lr": 2.0,         # 3.1 "at lr 1e-4 ... still more than 2x the untuned model's (12.55)"
    "a_b_unlikely": 3.0,      # 3.1 "If even lr* leaves beta3 above 3x the untuned model's"
    "adapted": 1.5,           # 3.2 "adapted if its ppl_8K <= 1.5 x the control's ppl_8K from the same part"
    "b1_ratio": 2.7,          # 3.2 B1 "ppl_128K / ppl_8K <= **2.7**"
    "b3_ratio": 5.6,          # 3.2 B3 "ppl_1M / ppl_128K <= **5.6**"
    "b4_control": Fraction(6, 10),  # 3.2 B4 "where the control retrieves >= 6/10"
    "b4_drop": Fraction(5, 10),     # 3.2 B4 "the small base retrieves at most (control - 5)/10"
    "b4_within": Fraction(2, 10),   # 3.2 B4 "the small base is within 2/10 of it"
    "b4_max_len": 8192,       # 3.2 B4 "at some length <= 8K"
    "control_spread": 0.02,   # 3.2 "If they differ by more than 2%, that run-to-run spread is stated"
    "c_lo": 1.2,              # 3.3 C1/C2 "C in [1.2, 1.6]"
    "c_hi": 1.6,
    "c_step": 2 ** 0.25,      # 3.3 C2 "beyond one grid step (2^(1/4) = 1.19x)"
    "c3_worse": 1.10,         # 3.3 C3 "ppl_32K more than 10% above 1e5's"
    "d_adapted": 10.1,        # 3.4 "The threshold is therefore **10.1**" (1.5 x 6.76)
    "d2_ratio": 3.2,          # 3.4 D2 "ppl_1M / ppl_128K <= 2.1 x 1.5 = **3.2**"
    "d_same_until": 16384,    # 3.4 "the same computation up to 16,384 tokens ... agree to the last digit"
}

MODEL = "smollm2"
T8, T16 = 8192, 16384
L32, L64, L128, L1M = 32768, 65536, 131072, 1_000_000
ORIGINAL = 100000
BETA3 = 1304          # PLAN.md section 2: beta3 = 1,303.8 at 8K, the grid's 1,304
BETA0_16K = 304201    # PLAN.md section 2: the floor of 304,201.7
LRS = {"lr1e4": 1e-4, "lr3e4": 3e-4, "lr1e3": 1e-3}  # part a's methods (config/smollm2_small/part_a.yaml)
SMALL = {"b1": BETA3, "b2": 500, "b1x": BETA3, "b2x": 500}
PAIR = {"b1": "b2", "b2": "b1", "b1x": "b2x", "b2x": "b1x"}  # the parts whose controls are the same cell
B_METHOD = {"b1": "base", "b2": "base", "b1x": "steps1000", "b2x": "steps1000"}  # amendment 1: its own cells
OTHER = {"b1": "part_b2", "b2": "part_b1", "b1x": "part_b2x", "b2x": "part_b1x", "d": "part_b1", "e": "part_d2"}
BASES_C = [100000, 200000, BETA0_16K, 500000, 1000000]
COLUMNS = ["part", "claim", "inputs", "threshold", "verdict", "note"]


@dataclass
class Row:
    part: str
    claim: str
    inputs: str
    threshold: str
    verdict: str
    note: str = ""


class Tables:
    """A part's published tables; every value not found is recorded in `missing` (file and what)."""

    def __init__(self, root: Path):
        self.root = root
        self.missing: list[str] = []
        self._cache: dict[str, list[dict] | None] = {}

    def take_missing(self) -> list[str]:
        missing, self.missing = self.missing, []
        return missing


    def rows(self, rel: str) -> list[dict] | None:
        if rel not in self._cache:
            path = self.root / rel
            if path.is_file():
                with path.open(newline="") as f:
                    self._cache[rel] = list(csv.DictReader(f))
            else:
                self._cache[rel] = None
        if self._cache[rel] is None:
            self.missing.append(str(self.root / rel))
        return self._cache[rel]

    def json(self, rel: str) -> dict | None:
        path = self.root / rel
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            self.missing.append(str(path))
            return None

    def first_row(self, length: int) -> tuple | None:
        """Where the first evaluation row of `length` begins: (shard sha256, line, offset, tokenizer sha256)."""
        rel = f"data/eval_len{length}/manifest.json"
        m = self.json(rel)
        try:
            source = m["rows"][0]["sources"][0]
            return (m["shards"][source["path"]], source["line"], m["rows"][0]["offset"],
                    m["tokenizer"]["tokenizer_json_sha256"])
        except (KeyError, IndexError, TypeError):
            if m is not None:
                self.missing.append(f"{self.root}/{rel} (no first row)")
            return None

    def first_doc_prefix(self, method: str, base: int, tune_len: int, length: int) -> tuple[float, int] | None:
        """(nll, tokens) of document 0's prefix up to `length`, from eval_docs.csv (the per-document sums)."""
        rel = f"cells/{method}/{leaf(base, tune_len)}/eval_docs.csv"
        rows = self.rows(rel)
        if rows is None:
            return None
        mine = [r for r in rows if r.get("doc") == "0" and (_num(r.get("end")) or math.inf) <= length]
        if not mine:
            self.missing.append(f"{self.root}/{rel} (no rows of document 0 up to {length})")
            return None
        return sum(float(r["nll"]) for r in mine), sum(int(r["tokens"]) for r in mine)

    def eval_rows(self, method: str, base: int, tune_len: int) -> list[dict] | None:
        return self.rows(f"cells/{method}/{leaf(base, tune_len)}/eval.csv")

    def number(self, rel: str, row: dict, column: str) -> float | None:
        """A number of a table's row; a column absent or empty is recorded as missing (NaN is a value)."""
        try:
            return float(row[column])
        except (KeyError, TypeError, ValueError):
            self.missing.append(f"{self.root}/{rel} (no value in column {column})")
            return None

    def ppl(self, method: str, base: int, tune_len: int, length: int) -> float | None:
        rel = f"cells/{method}/{leaf(base, tune_len)}/eval.csv"
        rows = self.eval_rows(method, base, tune_len)
        if rows is None:
            return None
        for r in rows:
            if r.get("scope") == "prefix" and _num(r.get("start")) == 0 and _num(r.get("end")) == length:
                return self.number(rel, r, "ppl")
        self.missing.append(f"{self.root}/{rel} (no prefix row at {length})")
        return None

    def passkey(self, method: str, base: int, tune_len: int, length: int) -> Fraction | None:
        rel = f"cells/{method}/{leaf(base, tune_len)}/passkey.csv"
        rows = self.rows(rel)
        if rows is None:
            return None
        hits = [r.get("correct") == "True" for r in rows if _num(r.get("length")) == length]
        if not hits:
            self.missing.append(f"{self.root}/{rel} (no prompts at {length})")
            return None
        return Fraction(sum(hits), len(hits))

    def bound(self, base: int, tune_len: int) -> dict | None:
        rows = self.rows("law/cells.csv")
        if rows is None:
            return None
        for r in rows:
            if r.get("method") == "base" and _num(r.get("base")) == base and _num(r.get("tune_len")) == tune_len:
                found = {"bound": self.number("law/cells.csv", r, "measured_bound"),
                         "predicted": self.number("law/cells.csv", r, "predicted_bound"),
                         "censored": r.get("censored")}
                if None in found.values():
                    if found["censored"] is None:
                        self.missing.append(f"{self.root}/law/cells.csv (no value in column censored)")
                    return None
                return found
        self.missing.append(f"{self.root}/law/cells.csv (no row for base {base} at {tune_len})")
        return None

    def _log(self, method: str, base: int, tune_len: int) -> tuple[Path, str] | None:
        """The fine-tune log of a cell (its path and text), or None recorded as missing."""
        path = self.root / f"logs/finetune/{MODEL}/{method}/{leaf(base, tune_len)}.log"
        if not path.is_file():
            self.missing.append(str(path))
            return None
        return path, path.read_text(errors="replace")

    def losses(self, method: str, base: int, tune_len: int) -> list[float] | None:
        if (log := self._log(method, base, tune_len)) is None:
            return None
        path, text = log
        found = re.findall(r"\{'loss': '?([^,'}]+)'?", text)
        if not found:
            self.missing.append(f"{path} (no logged loss)")
            return None
        return [float(x) for x in found]

    def first_pass(self, method: str, base: int, tune_len: int, logs: int) -> list[float] | None:
        """The last `logs` logged losses of the fine-tune's first epoch (epoch <= 1: rows not seen before), or None."""
        if (log := self._log(method, base, tune_len)) is None:
            return None
        path, text = log
        found = [(float(loss), float(epoch)) for loss, epoch in re.findall(
            r"\{'loss': '?([^,'}]+)'?[^}]*'epoch': '?([^,'}]+)'?", text)]
        first = [loss for loss, epoch in found if epoch <= 1 + 1e-9]
        if len(first) < logs:
            self.missing.append(f"{path} (fewer than {logs} logged losses in the first epoch)")
            return None
        return first[-logs:]


def _take_missing(*tables: Tables) -> list[str]:
    """What each of the tables (each once, however often passed: a control may be this part's own) missed."""
    return [item for i, table in enumerate(tables) if table not in tables[:i] for item in table.take_missing()]

def _num(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def fmt(value) -> str:
    if isinstance(value, Fraction):  # retrieval: out of 10 prompts where it can be
        tenths = value * 10
        return f"{tenths.numerator}/10" if tenths.denominator == 1 else f"{value.numerator}/{value.denominator}"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def show(**inputs) -> str:
    return "; ".join(f"{k} = {fmt(v)}" for k, v in inputs.items() if v is not None)


def missing_word(missing: list[str]) -> str:
    return "not tested (missing: " + ", ".join(dict.fromkeys(missing)) + ")"


def pct(a: float, b: float) -> float:
    return abs(a - b) / min(a, b)


# ---------------------------------------------------------------- part a (PLAN.md 3.1)

def part_a(t: Tables, _other: Tables) -> list[Row]:
    out, kept, loss_missing = [], {}, []
    for method in LRS:
        losses = t.losses(method, BETA3, T8)
        miss = t.take_missing()
        thr = "excluded if the last logged loss is NaN or above the first"
        if miss:
            loss_missing += miss
            out.append(Row("a", f"run {method} diverged?", "", thr, missing_word(miss)))
            continue
        kept[method] = not (math.isnan(losses[-1]) or losses[-1] > losses[0])
        out.append(Row("a", f"run {method} diverged?", show(first_loss=losses[0], last_loss=losses[-1]), thr,
                       "kept" if kept[method] else "excluded (diverged)"))
    ppl = {method: t.ppl(method, BETA3, T8, T8) for method in LRS}
    ppl_missing = t.take_missing()
    untuned = t.ppl(UNTUNED, ORIGINAL, T8, T8)
    untuned_missing = t.take_missing()
    inputs = show(**{f"ppl_8K {m}": ppl[m] for m in LRS})

    rule = f"lowest ppl_8K of the runs kept; within {THRESHOLDS['a_within']:.0%}, the smaller lr"
    star = None
    if loss_missing or ppl_missing:
        out.append(Row("a", "lr*", inputs, rule, missing_word(loss_missing + ppl_missing)))
    else:
        candidates = {m: ppl[m] for m in LRS if kept[m] and not math.isnan(ppl[m])}
        if not candidates:
            out.append(Row("a", "lr*", inputs, rule, "not tested (every run diverged)"))
        else:
            best = min(candidates.values())
            star = min((m for m, p in candidates.items() if p <= (1 + THRESHOLDS["a_within"]) * best), key=LRS.get)
            change = "as shipped" if LRS[star] == THRESHOLDS["a_lr_shipped"] else "change finetune.lr before b1"
            out.append(Row("a", "lr*", inputs, rule, f"lr* = {LRS[star]:g} ({change})"))

    miss = [x for x in ppl_missing if "/lr1e4/" in x] + untuned_missing
    limit = None if untuned is None else THRESHOLDS["a_slow_lr"] * untuned
    out.append(Row("a", "expectation: lr 1e-4 still > 2x untuned",
                   show(**{"ppl_8K lr1e4": ppl["lr1e4"], "ppl_8K untuned": untuned}),
                   f"> {THRESHOLDS['a_slow_lr']:g} x untuned" + ("" if limit is None else f" = {limit:.4g}"),
                   missing_word(miss) if miss else "agrees" if ppl["lr1e4"] > limit else "disagrees"))
    if ppl_missing:
        verdict = missing_word(ppl_missing)
    else:
        lowest = min(LRS, key=lambda m: (math.isnan(ppl[m]), ppl[m]))
        verdict = "agrees" if lowest in ("lr3e4", "lr1e3") else "disagrees"
    out.append(Row("a", "expectation: 3e-4 or 1e-3 lowest", inputs, "lowest ppl_8K at lr 3e-4 or 1e-3", verdict))
    out.append(Row("a", "expectation: 1e-3 may diverge", "", "(no rule)",
                   missing_word([x for x in loss_missing if "/lr1e3/" in x]) if "lr1e3" not in kept else
                   "reported (no rule): " + ("did not diverge" if kept["lr1e3"] else "diverged")))
    worst = None if untuned is None else THRESHOLDS["a_b_unlikely"] * untuned
    thr = f"> {THRESHOLDS['a_b_unlikely']:g} x untuned" + ("" if worst is None else f" = {worst:.4g}")
    if star is None or untuned_missing:
        verdict = missing_word(untuned_missing) if untuned_missing else "not tested (no lr*)"
        out.append(Row("a", "b's prospects: lr* > 3x untuned", show(ppl_8K_untuned=untuned), thr, verdict))
    else:
        out.append(Row("a", "b's prospects: lr* > 3x untuned", show(**{"ppl_8K lr*": ppl[star],
                       "ppl_8K untuned": untuned}), thr,
                       "above: b unlikely to meet the 1.5x criterion (b runs anyway)" if ppl[star] > worst
                       else "within"))
    return out


# ---------------------------------------------------------------- parts b1, b2 (PLAN.md 3.2)

def _adapted(t: Tables, base: int, m: str = "base") -> tuple[bool | None, float | None, float | None]:
    small, control = t.ppl(m, base, T8, T8), t.ppl(m, ORIGINAL, T8, T8)
    if small is None or control is None:
        return None, small, control
    return small <= THRESHOLDS["adapted"] * control, small, control


def _b1_ratio(t: Tables, base: int, m: str = "base") -> float | None:
    p8, p128 = t.ppl(m, base, T8, T8), t.ppl(m, base, T8, L128)
    return None if p8 is None or p128 is None else p128 / p8


def _retrieval(t: Tables, method: str, base: int, tune_len: int, lengths) -> dict[int, Fraction | None]:
    return {length: t.passkey(method, base, tune_len, length) for length in lengths}


def part_b(part: str, t: Tables, other: Tables) -> list[Row]:
    base, label, m = SMALL[part], f"{SMALL[part]}", B_METHOD[part]
    other_part = PAIR[part]
    pair = " and ".join(sorted((part, other_part)))
    out = []
    # the controls' spread (needs both parts)
    c_own = t.ppl(m, ORIGINAL, T8, T8)
    c_other = other.ppl(m, ORIGINAL, T8, T8)
    miss = t.take_missing() + other.take_missing()
    spread_note = ""
    thr = f"differ by <= {THRESHOLDS['control_spread']:.0%}"
    inputs = show(**{f"control ppl_8K {part}": c_own, f"control ppl_8K {other_part}": c_other})
    if miss:
        out.append(Row(part, f"controls of {pair}", inputs, thr, missing_word(miss)))
    else:
        spread = pct(c_own, c_other)
        big = spread > THRESHOLDS["control_spread"]
        if big:
            spread_note = f"control spread {pair.replace(' and ', '/')} {spread:.1%} > {THRESHOLDS['control_spread']:.0%}"
        out.append(Row(part, f"controls of {pair}", inputs + f"; spread = {spread:.2%}", thr,
                       "reported: spread > 2%" if big else "reported: spread <= 2%"))

    adapted, small8, control8 = _adapted(t, base, m)
    miss = t.take_missing()
    out.append(Row(part, f"adapted ({label})", show(ppl_8K=small8, control_ppl_8K=control8),
                   f"ppl_8K <= {THRESHOLDS['adapted']:g} x control's",
                   missing_word(miss) if miss else ("adapted" if adapted else "not adapted"), spread_note))
    blocked = missing_word(miss) if miss else (None if adapted else "not tested (flat but not adapted)")

    def claim(name, inputs, threshold, verdict, note=""):
        out.append(Row(part, name, inputs, threshold, blocked or verdict, note))

    # B1
    ratio = _b1_ratio(t, base, m)
    p8, p128 = t.ppl(m, base, T8, T8), t.ppl(m, base, T8, L128)
    miss = t.take_missing()
    thr = f"ppl_128K / ppl_8K <= {THRESHOLDS['b1_ratio']:g}"
    claim(f"B1 ({label})", show(ppl_8K=p8, ppl_128K=p128, ratio=ratio), thr,
          missing_word(miss) if miss else ("agrees" if ratio <= THRESHOLDS["b1_ratio"] else "disagrees"))
    # B1, order: both parts' small bases, each adapted against its own control
    ratios = {base: ratio, SMALL[other_part]: _b1_ratio(other, SMALL[other_part], m)}
    adapt_other, _, _ = _adapted(other, SMALL[other_part], m)
    miss = t.take_missing() + other.take_missing()
    r500, r1304 = ratios[500], ratios[BETA3]
    if miss:
        verdict = missing_word(miss)
    elif not (adapted and adapt_other):
        verdict = "not tested (flat but not adapted)"
    else:
        verdict = "agrees" if r500 < r1304 else "disagrees" if r500 > r1304 else "unsettled"
    out.append(Row(part, "B1, order", show(ratio_500=r500, ratio_1304=r1304), "500's ratio < beta3's (1304)", verdict))
    # B2: the control against the small base, at 32K and 128K
    claim(f"B2 ({label})", *_b2(t, m, base, T8), spread_note)
    # B3
    p1m = t.ppl(m, base, T8, L1M)
    p128 = t.ppl(m, base, T8, L128)
    miss = t.take_missing()
    r = None if miss else p1m / p128
    claim(f"B3 ({label})", show(ppl_128K=p128, ppl_1M=p1m, ratio=r), f"ppl_1M / ppl_128K <= {THRESHOLDS['b3_ratio']:g}",
          missing_word(miss) if miss else ("agrees" if r <= THRESHOLDS["b3_ratio"] else "disagrees"))
    # B4
    short = [2048, 4096, 8192]
    name, thr, (inputs, verdict) = f"B4 ({label})", _b4_threshold(), _b4(t, m, base, T8, t, short, control_method=m)
    claim(name, inputs, thr, verdict, spread_note)
    past = {**_retrieval(t, m, base, T8, [T16, L32])}
    ctrl = {**_retrieval(t, m, ORIGINAL, T8, [T16, L32])}
    miss = t.take_missing()
    claim(f"B4 past T_tune ({label})", show(**{f"{L // 1024}K": v for L, v in past.items()},
          **{f"control {L // 1024}K": v for L, v in ctrl.items()}), "(no rule)",
          missing_word(miss) if miss else "reported (no rule)")
    out.append(_against_untuned(part, t, m, base, small8, control8))
    out.append(_in_distribution(part, t, m, base))
    return out


FIRST_PASS_LOGS = 5  # the last 5 logs (50 steps at logging_steps 10) of the first epoch


def _in_distribution(part: str, t: Tables, m: str, base: int, tune_len: int = T8, control_part: Tables | None = None,
                     control_m: str | None = None) -> Row:
    """The small base against the control on the tuning corpus: their logged training losses over the last 50
    steps of the first epoch, where every row is read for the first time (a held-out estimate, paired: the same
    rows in the same order), and exp of the gap, the ratio of their in-distribution perplexities at T_tune.
    A control of another part (`control_part`, method `control_m`) read other rows at other steps: unpaired."""
    control_part, control_m = (t if control_part is None else control_part), control_m or m
    paired = control_part is t
    name = f"in-distribution ({base}, first-pass training loss{'' if paired else ', unpaired'})"
    thr = ("(no rule; the logged loss of rows read for the first time, last 50 steps of epoch 1"
           + (")" if paired else "; the control's from another part: other rows, other steps)"))
    small = t.first_pass(m, base, tune_len, FIRST_PASS_LOGS)
    control = control_part.first_pass(control_m, ORIGINAL, tune_len, FIRST_PASS_LOGS)
    miss = _take_missing(t, control_part)
    if miss:
        return Row(part, name, "", thr, missing_word(miss))
    small_loss, control_loss = sum(small) / len(small), sum(control) / len(control)
    gap = small_loss - control_loss
    each = [a - b for a, b in zip(small, control)]  # the gap of each log: its spread, not an interval
    return Row(part, name, show(small_loss=small_loss, control_loss=control_loss, gap=gap,
                                ppl_ratio=math.exp(gap), ppl_ratio_per_log=f"{math.exp(min(each)):.3f}-"
                                f"{math.exp(max(each)):.3f}"), thr, "reported (no rule)")


UNTUNED_PART = "part_a"  # its untuned cell, evaluated on 4 windows whose first begins as the 1M row does
UNTUNED_LEN = 245760     # part a's evaluation length (config/smollm2_small/part_a.yaml)


def _against_untuned(part: str, t: Tables, m: str, base: int, small8, control8, tune_len: int = T8) -> Row:
    """ppl_8K of the small base and of the control over the untuned model's, on the same scored tokens."""
    name, thr = "against the untuned model (8K)", "(no rule; part a's untuned cell, its window 0)"
    u = Tables(t.root.parent / UNTUNED_PART)
    same = (t.first_row(L1M), u.first_row(UNTUNED_LEN))
    untuned = u.first_doc_prefix(UNTUNED, ORIGINAL, T8, T8)
    here = t.first_doc_prefix(m, base, tune_len, T8)
    miss = t.take_missing() + u.take_missing()
    if miss or None in (small8, control8):
        return Row(part, name, "", thr, missing_word(miss) if miss else "not tested (missing: ppl_8K)")
    if same[0] != same[1] or untuned[1] != here[1]:
        return Row(part, name, show(rows=f"{same[0]} vs {same[1]}", tokens=f"{here[1]} vs {untuned[1]}"), thr,
                   "not comparable (other tokens)")
    u8 = math.exp(untuned[0] / untuned[1])
    return Row(part, name, show(untuned_ppl_8K=u8, tokens=untuned[1], small_over_untuned=small8 / u8,
                                control_over_untuned=control8 / u8), thr, "reported (no rule)")


def _b2(t: Tables, m: str, base: int, tune_len: int, control: Tables | None = None,
        control_m: str | None = None) -> tuple[str, str, str]:
    """(inputs, threshold, verdict) of B2's rule: the control (1e5, method m of this part, or control_m of the
    `control` part) above the small base at 32K and 128K."""
    control, control_m = (t if control is None else control), control_m or m
    s = {L: t.ppl(m, base, tune_len, L) for L in (L32, L128)}
    c = {L: control.ppl(control_m, ORIGINAL, tune_len, L) for L in (L32, L128)}
    miss = _take_missing(t, control)
    if miss:
        verdict = missing_word(miss)
    elif all(c[L] > s[L] for L in s):
        verdict = "agrees"
    elif any(s[L] > c[L] for L in s):
        verdict = "disagrees"
    else:
        verdict = "unsettled"
    return (show(ppl_32K=s[L32], ppl_128K=s[L128], control_ppl_32K=c[L32], control_ppl_128K=c[L128]),
            "control above the small base at 32K and 128K", verdict)


def _b4_threshold(max_len: int = THRESHOLDS["b4_max_len"]) -> str:
    return (f"agrees: at some L <= {max_len // 1024}K with control >= {fmt(THRESHOLDS['b4_control'])}, small <= "
            f"control - {fmt(THRESHOLDS['b4_drop'])}; disagrees: at every such L, within {fmt(THRESHOLDS['b4_within'])}")


def _b4(t: Tables, method: str, base: int, tune_len: int, control: Tables, lengths,
        control_method: str = "base", control_tune_len: int = T8,
        max_len: int = THRESHOLDS["b4_max_len"]) -> tuple[str, str]:
    """(inputs, verdict) of B4's rule for one small-base cell against a control (base 1e5, by default at 8K),
    read at the lengths <= max_len (B4: 8K; d2: its T_tune, 16K)."""
    small = _retrieval(t, method, base, tune_len, lengths)
    ctrl = _retrieval(control, control_method, ORIGINAL, control_tune_len, lengths)
    miss = _take_missing(t, control)
    inputs = show(**{f"{L // 1024}K": v for L, v in small.items()},
                  **{f"control {L // 1024}K": v for L, v in ctrl.items()})
    if miss:
        return inputs, missing_word(miss)
    live = [L for L in lengths if L <= max_len and ctrl[L] >= THRESHOLDS["b4_control"]]
    if not live:
        return inputs, f"not tested (the control retrieves < 6/10 at every length <= {max_len // 1024}K)"
    if any(small[L] <= ctrl[L] - THRESHOLDS["b4_drop"] for L in live):
        return inputs, "agrees"
    if all(abs(small[L] - ctrl[L]) <= THRESHOLDS["b4_within"] for L in live):
        return inputs, "disagrees"
    return inputs, "unsettled at 10 prompts"


# ---------------------------------------------------------------- part c (PLAN.md 3.3)

def _in_range(b: dict, lo: float, hi: float) -> str:
    """'in', 'out' or 'unknown' (a censored bound not yet outside) for a bound against [lo, hi]."""
    x, cens = b["bound"], b["censored"]
    if cens == "right":
        return "out" if x > hi else "unknown"
    if cens == "left":
        return "out" if x < lo else "unknown"
    return "in" if lo <= x <= hi else "out"


def _show_bound(b: dict) -> str:
    sign = {"right": ">= ", "left": "<= "}.get(b["censored"], "")
    return f"{sign}{b['bound']:,.0f} (C = {b['bound'] / b['predicted']:.3g})"


def part_c(t: Tables, _other: Tables) -> list[Row]:
    out = []
    lo, hi = THRESHOLDS["c_lo"], THRESHOLDS["c_hi"]
    # C1
    b = {base: t.bound(base, T16) for base in (500000, 1000000)}
    miss = t.take_missing()
    inputs = "; ".join(f"bound {k:,} = {_show_bound(v)}" for k, v in b.items() if v)
    thr = f"C in [{lo:g}, {hi:g}] for both, 1e6's bound above 5e5's"
    if miss:
        verdict = missing_word(miss)
    else:
        ranges = [_in_range(v, lo * v["predicted"], hi * v["predicted"]) for v in b.values()]
        censored = any(v["censored"] != "no" for v in b.values())
        reversed_ = not censored and b[1000000]["bound"] < b[500000]["bound"]
        if "out" in ranges or reversed_:
            verdict = "disagrees"
        elif "unknown" in ranges or censored or b[1000000]["bound"] == b[500000]["bound"]:
            verdict = "unsettled"
        else:
            verdict = "agrees"
    out.append(Row("c", "C1: beta > beta0 follow T_extra", inputs, thr, verdict))
    # C2
    small = [100000, 200000, BETA0_16K]
    b = {base: t.bound(base, T16) for base in small}
    miss = t.take_missing()
    lo_b, hi_b = lo * T16, hi * T16
    inputs = "; ".join(f"bound {k:,} = {_show_bound(v)}" for k, v in b.items() if v)
    thr = f"each in [{lo_b:,.0f}, {hi_b:,.0f}]; none > {THRESHOLDS['c_step']:.4f} x a smaller base's"
    if miss:
        verdict = missing_word(miss)
    else:
        ranges = [_in_range(v, lo_b, hi_b) for v in b.values()]
        exact = all(v["censored"] == "no" for v in b.values())
        grows = exact and any(b[y]["bound"] > THRESHOLDS["c_step"] * b[x]["bound"]
                              for i, x in enumerate(small) for y in small[i + 1:])
        beta0_grows = b[BETA0_16K]["censored"] != "left" and b[100000]["censored"] != "right" and \
            b[BETA0_16K]["bound"] > THRESHOLDS["c_step"] * b[100000]["bound"]
        if "out" in ranges or beta0_grows:
            verdict = "disagrees"
        elif "unknown" in ranges or grows or not exact:
            verdict = "unsettled"
        else:
            verdict = "agrees"
    out.append(Row("c", "C2: beta <= beta0 bounded near T_tune", inputs, thr, verdict))
    # C3
    p32 = {base: t.ppl("base", base, T16, L32) for base in BASES_C}
    p64 = {base: t.ppl("base", base, T16, L64) for base in BASES_C}
    miss = t.take_missing()
    inputs = "; ".join([f"ppl_32K {k:,} = {fmt(v)}" for k, v in p32.items() if v is not None]
                       + [f"ppl_64K {k:,} = {fmt(v)}" for k, v in p64.items() if v is not None])
    thr = (f"2e5 or 304,201 > {THRESHOLDS['c3_worse']:g} x 1e5's ppl_32K, and ppl_32K falls 304,201 > 5e5 > 1e6; "
           "disagrees: falls with beta from 1e5")
    if miss:
        verdict = missing_word(miss)
    else:
        worse = any(p32[x] > THRESHOLDS["c3_worse"] * p32[100000] for x in (200000, BETA0_16K))
        falls_top = p32[BETA0_16K] > p32[500000] > p32[1000000]
        falls_all = all(p32[x] > p32[y] for x, y in zip(BASES_C, BASES_C[1:]))
        verdict = "agrees" if worse and falls_top else "disagrees" if falls_all else "unsettled"
    out.append(Row("c", "C3: larger bases first get worse", inputs, thr, verdict))
    return out


# ---------------------------------------------------------------- part d (PLAN.md 3.4)

def _logn_claims(part: str, t: Tables, m: str, m_logn: str, blocked: str | None,
                 note: str = "") -> tuple[list[Row], str | None]:
    """The bug check (method m and its log-scaled twin m_logn agree to the last digit up to 16,384 tokens), D1 and
    D2 for base 500 at 16K; `blocked` (a reason, or None) replaces D1's and D2's verdicts. Returns the rows and
    `blocked` with a failed or missing bug check added."""
    out = []
    a, b = t.eval_rows(m, 500, T16), t.eval_rows(m_logn, 500, T16)
    miss = t.take_missing()
    thr = f"every eval.csv row with end <= {THRESHOLDS['d_same_until']:,}: nll_sum, tokens, ppl identical"
    if miss:
        bug, verdict, inputs = None, missing_word(miss), ""
    else:
        def key(rows):
            return {(r.get("scope"), r.get("start"), r.get("end")): (r.get("nll_sum"), r.get("tokens"), r.get("ppl"))
                    for r in rows if (_num(r.get("end")) or math.inf) <= THRESHOLDS["d_same_until"]}
        ka, kb = key(a), key(b)
        differ = sorted({k for k in ka.keys() | kb.keys() if ka.get(k) != kb.get(k)}, key=lambda k: _num(k[2]))
        inputs = f"{len(ka)} rows of {m}, {len(kb)} of {m_logn}; differing: " + (
            ", ".join(f"{s} {e}" for s, _, e in differ) if differ else "none")
        bug = bool(differ) or not ka
        verdict = "agrees" if not bug else "disagrees (a bug, not a result)"
    out.append(Row(part, f"{m} = {m_logn} up to 16K", inputs, thr, verdict))
    if bug:
        blocked = blocked or f"not tested (bug: {m} and {m_logn} differ up to 16K)"
    elif bug is None:
        blocked = blocked or missing_word(miss)

    v = {name: (t.ppl(name, 500, T16, L128), t.ppl(name, 500, T16, L1M)) for name in (m, m_logn)}
    miss = t.take_missing()
    ratio = {name: None if None in pair else pair[1] / pair[0] for name, pair in v.items()}
    inputs = show(**{f"{name} ppl_128K": v[name][0] for name in v}, **{f"{name} ppl_1M": v[name][1] for name in v},
                  **{f"{name} 1M/128K": ratio[name] for name in v})
    if miss:
        d1 = d2 = missing_word(miss)
    else:
        (_, b1m), (_, l1m) = v[m], v[m_logn]
        d1 = ("agrees" if l1m < b1m and ratio[m_logn] < ratio[m]
              else "disagrees" if l1m > b1m else "unsettled")
        d2 = "agrees" if ratio[m_logn] <= THRESHOLDS["d2_ratio"] else "disagrees"
    out.append(Row(part, "D1: log-scaled attention flattens the curve", inputs,
                   f"{m_logn} lower at 1M and smaller 1M/128K; disagrees: {m_logn} higher at 1M", blocked or d1, note))
    out.append(Row(part, "D2: the recipe reaches 1M", inputs,
                   f"{m_logn} 1M/128K <= {THRESHOLDS['d2_ratio']:g}", blocked or d2, note))
    return out, blocked


def part_d(t: Tables, other: Tables) -> list[Row]:
    out = []
    p8 = t.ppl("base", 500, T16, T8)
    miss = t.take_missing()
    control8 = other.ppl("base", ORIGINAL, T8, T8)
    other.take_missing()  # b1's control is reported beside it, not read by the rule
    thr = f"ppl_8K <= {THRESHOLDS['d_adapted']:g} (1.5 x untuned 6.76, law study window 0)"
    adapted = None if miss else p8 <= THRESHOLDS["d_adapted"]
    out.append(Row("d", "precondition: 500 at 16K adapted", show(ppl_8K=p8, b1_control_ppl_8K=control8), thr,
                   missing_word(miss) if miss else "adapted" if adapted else "not adapted"))
    blocked = missing_word(miss) if miss else None if adapted else "not tested (not adapted)"

    rows, blocked = _logn_claims("d", t, "base", "base_logn", blocked)
    out += rows
    for method in ("base", "base_logn"):
        inputs, verdict = _b4(t, method, 500, T16, other, [2048, 4096, 8192, T16, L32])
        out.append(Row("d", f"D3: retrieval ({method})", inputs, "(no rule; as B4, against b1's control)",
                       verdict if verdict.startswith("not tested (missing") else "reported (no rule)"))
    return out


def part_d2(t: Tables, _other: Tables) -> list[Row]:
    """PLAN.md's amendment 2: 500 and the control (1e5) tuned the same way at 16K (method steps600), 500 also
    evaluated with log-scaled attention (steps600_logn). The precondition is 3.2's, against this control; D1 and D2
    are read whether or not 500 is adapted (they compare two evaluations of one model), with the precondition's
    outcome in their note; B2's rule at 16K; retrieval by B4's rule at the lengths <= T_tune (16K)."""
    return _recipe("d2", t, "steps600", t, "steps600", "adapted (500 at 16K)", "the control")


def part_e(t: Tables, other: Tables) -> list[Row]:
    """PLAN.md's amendment 3: 500 alone tuned 900 steps at 16K, the 3,600 packed rows each read once (method
    steps900), also evaluated with log-scaled attention (steps900_logn); the control is part d2's (steps600, 600
    steps of the same recipe), read from its published folder. Rules as d2's; the in-distribution row is unpaired."""
    return _recipe("e", t, "steps900", other, "steps600", "adapted (500 at 16K, 900 steps)", "d2's control")


def _recipe(part: str, t: Tables, m: str, control: Tables, control_m: str, adapted_name: str, who: str) -> list[Row]:
    """The rows of d2 and e: 500 (method m, and m + "_logn") against the control (control_m in `control`)."""
    m_logn, out = f"{m}_logn", []
    small8, control8 = t.ppl(m, 500, T16, T8), control.ppl(control_m, ORIGINAL, T16, T8)
    miss = _take_missing(t, control)
    adapted = None if miss else small8 <= THRESHOLDS["adapted"] * control8
    out.append(Row(part, adapted_name, show(ppl_8K=small8, control_ppl_8K=control8),
                   f"ppl_8K <= {THRESHOLDS['adapted']:g} x {'control' if control is t else who}'s",
                   missing_word(miss) if miss else "adapted" if adapted else "not adapted"))
    out.append(Row(part, "d's first precondition (ppl_8K <= 10.1)", show(ppl_8K=small8),
                   f"(no rule since amendment 2; was: ppl_8K <= {THRESHOLDS['d_adapted']:g})",
                   missing_word(miss) if miss else
                   f"reported: {'met' if small8 <= THRESHOLDS['d_adapted'] else 'not met'}"))
    note = "" if adapted is None or adapted else f"500 not adapted ({small8 / control8:.2f} x {who} at 8K)"
    rows, _ = _logn_claims(part, t, m, m_logn, None, note)
    out += rows
    out.append(Row(part, "B2 at 16K (500)", *_b2(t, m, 500, T16, control, control_m), note))
    thr = _b4_threshold(T16)
    for method in (m, m_logn):
        inputs, verdict = _b4(t, method, 500, T16, control, [2048, 4096, 8192, T16, L32], control_method=control_m,
                              control_tune_len=T16, max_len=T16)
        out.append(Row(part, f"D3: retrieval ({method})", inputs, thr, verdict, note))
    out.append(_against_untuned(part, t, m, 500, small8, control8, tune_len=T16))
    out.append(_in_distribution(part, t, m, 500, tune_len=T16, control_part=control, control_m=control_m))
    return out


PARTS = {"a": part_a, **{b: (lambda t, o, b=b: part_b(b, t, o)) for b in ("b1", "b2", "b1x", "b2x")},
         "c": part_c, "d": part_d, "d2": part_d2, "e": part_e}


def verdicts(part: str, results: Path, other: Path | None = None) -> list[Row]:
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}: choose one of {', '.join(PARTS)}")
    if other is None:
        other = results.parent / OTHER.get(part, "")  # parts a and c read no other part
    rows = PARTS[part](Tables(results), Tables(other))
    unfinished = [f"{folder.name} unfinished ({folder / 'UNFINISHED'})" for folder in (results, other)
                  if (folder / "UNFINISHED").is_file()]  # gpu_study.sh publish with PUBLISH_UNFINISHED=1
    for row in rows if unfinished else []:
        row.note = "; ".join(([row.note] if row.note else []) + unfinished)
    return rows


# ---------------------------------------------------------------- the claims (issue 15, item 3)
# Each claim of issue 15 and the rows of the parts that judge it (section 3's rules, by the `claim` of their
# verdicts.csv), in the parts the write-up reads: b1x and b2x at 8K (amendment 1), c and d2 at 16K (amendment 2).
CLAIMS = {
    "small bases rise slowly, with no bound (Thm 1)": {
        "b1x": ["B1 (1304)", "B3 (1304)"], "b2x": ["B1 (500)", "B3 (500)"]},
    "the smaller base, the flatter": {"b2x": ["B1, order"]},
    "the original base is worse than the small bases (the 10000 analog)": {
        "b1x": ["B2 (1304)"], "b2x": ["B2 (500)"], "d2": ["B2 at 16K (500)"], "e": ["B2 at 16K (500)"]},
    "critical base beta0 at 16K (C3: 10000 no longer the worst base)": {
        "c": ["C1: beta > beta0 follow T_extra", "C2: beta <= beta0 bounded near T_tune",
              "C3: larger bases first get worse"]},
    "the 1M recipe (500 at 16K, log-scaled attention)": {
        "d2": ["steps600 = steps600_logn up to 16K", "D1: log-scaled attention flattens the curve",
               "D2: the recipe reaches 1M"],
        "e": ["steps900 = steps900_logn up to 16K", "D1: log-scaled attention flattens the curve",
              "D2: the recipe reaches 1M"]},
    "small bases lose retrieval (Men et al. 2024)": {
        "b1x": ["B4 (1304)"], "b2x": ["B4 (500)"],
        "d2": ["D3: retrieval (steps600)", "D3: retrieval (steps600_logn)"],
        "e": ["D3: retrieval (steps900)", "D3: retrieval (steps900_logn)"]},
}
PRECONDITION = {"b1x": "adapted (1304)", "b2x": "adapted (500)", "d2": "adapted (500 at 16K)",
                "e": "adapted (500 at 16K, 900 steps)"}
CLAIM_COLUMNS = ["claim", "part", "rule", "verdict", "inputs", "precondition", "note"]


def _published(study: Path, part: str) -> dict[str, dict] | None:
    """The committed verdicts.csv of a part, by its `claim` column; None if the part has not been published."""
    path = study / f"part_{part}" / "verdicts.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        return {row["claim"]: row for row in csv.DictReader(f)}


def claims(study: Path) -> list[dict]:
    """One row per claim and rule, read from the parts' committed verdicts.csv (written by this script, and
    tested to equal what it computes from the published tables); a part not yet published is "not run"."""
    out, published = [], {part: _published(study, part) for by_part in CLAIMS.values() for part in by_part}
    for claim, by_part in CLAIMS.items():
        for part, rules in by_part.items():
            rows = published[part]
            for rule in rules:
                row = (rows or {}).get(rule)
                pre = (rows or {}).get(PRECONDITION.get(part, ""))
                verdict = ("not run" if rows is None else row["verdict"] if row else
                           f"missing from {study.name}/part_{part}/verdicts.csv")
                out.append({"claim": claim, "part": part, "rule": rule, "verdict": verdict,
                            "inputs": row["inputs"] if row else "",
                            "precondition": f"{pre['verdict']} ({pre['inputs']})" if pre else "",
                            "note": row["note"] if row else ""})
    return out


def claims_markdown(rows: list[dict]) -> str:
    """The rows as a table, then per claim the count of each verdict word (its first word: agrees, disagrees,
    unsettled, not tested, not run)."""
    lines = [_table(rows, CLAIM_COLUMNS), ""]
    for claim in CLAIMS:
        words = [re.match(r"not \w+|\w+", r["verdict"]).group(0) for r in rows if r["claim"] == claim]
        lines.append(f"- {claim}: " + ", ".join(f"{w} {words.count(w)}" for w in dict.fromkeys(words)))
    return "\n".join(lines)


def tokens_trained(study: Path) -> list[dict]:
    """Per fine-tuned cell of every published part, from its model_manifest.json (`gpu_study.sh pack`, parts
    published after 13f3125): optimizer steps x global batch x T_tune, the rows read once (the distinct ones),
    epochs, the last logged loss and the attempts. Earlier parts published no model manifest: PLAN.md section 4
    gives their tokens from the configs."""
    out = []
    for manifest in sorted(study.glob("part_*/cells/*/*/model_manifest.json")):
        m = json.loads(manifest.read_text())
        spec = m["spec"]
        rows = spec["steps"] * spec["global_batch_size"]
        out.append({"part": manifest.parts[-5].removeprefix("part_"), "cell": f"{manifest.parts[-3]}/{manifest.parts[-2]}",
                    "steps": spec["steps"], "global_batch": spec["global_batch_size"], "tune_len": m["tune_len"],
                    "tokens": rows * m["tune_len"], "distinct_tokens": min(rows, m["rows_per_epoch"]) * m["tune_len"],
                    "epochs": m["epochs"], "final_loss": m["final_loss"], "attempts": len(m.get("attempts") or [])})
    return out


def _table(rows: list[dict], columns: list[str]) -> str:
    """`rows` as a markdown table of `columns` (a "|" in a value shown as "/")."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]).replace("|", "/") for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def markdown(rows: list[Row]) -> str:
    return _table([r.__dict__ for r in rows], COLUMNS)


def main_claims(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="verdicts.py claims",
                                     description="Each claim of issue 15, the verdict of every rule that judges it "
                                                 "in the published parts, and the tokens each cell trained on.")
    parser.add_argument("study", type=Path, nargs="?", default=Path(__file__).parent,
                        help="the study's folder of published parts (default: this script's)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the claims' rows to this CSV file")
    args = parser.parse_args(argv)
    rows = claims(args.study)
    print(claims_markdown(rows))
    tokens = tokens_trained(args.study)
    print("\nTokens trained per cell (model_manifest.json):" if tokens else
          "\nTokens trained per cell: no published part has model manifests (PLAN.md section 4).")
    for t in tokens:
        print(f"- {t['part']} {t['cell']}: {t['steps']} steps x {t['global_batch']} x {t['tune_len']} = "
              f"{t['tokens']:,} tokens ({t['distinct_tokens']:,} distinct, {t['epochs']} epochs), final loss "
              f"{t['final_loss']:.4g}, {t['attempts']} attempt(s)")
    if args.csv:
        _write_csv(args.csv, rows, CLAIM_COLUMNS)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["claims"]:
        return main_claims(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=list(PARTS))
    parser.add_argument("results", type=Path,
                        help="the part's published folder, e.g. docs/results/smollm2_small/part_b1")
    parser.add_argument("--other", type=Path, default=None,
                        help="the other part that a rule reads (b1: part_b2; b2 and d: part_b1; b1x: part_b2x; "
                             "b2x: part_b1x; e: part_d2); "
                             "default: the sibling folder")
    parser.add_argument("--csv", type=Path, default=None, help="also write the rows to this CSV file")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        parser.error(f"{args.results} is not a folder: give the part's published results folder")
    rows = verdicts(args.part, args.results, args.other)
    print(markdown(rows))
    if args.csv:
        _write_csv(args.csv, [r.__dict__ for r in rows], COLUMNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
