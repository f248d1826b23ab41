"""The numbers of PLAN.md's amendment 1, "The adaptation forecast", from part b1's published training logs.

    python docs/results/smollm2_small/adaptation_forecast.py

The gap is beta3's logged training loss minus the control's (`'loss'` every 10 steps); the fits use steps 150-450.
"""

import re
from pathlib import Path

import numpy as np

LOGS = Path(__file__).parent / "part_b1/logs/finetune/smollm2/base"


def losses(name: str, logs: Path = LOGS) -> np.ndarray:
    return np.array([float(x) for x in re.findall(r"'loss': '([0-9.]+)'", (logs / name).read_text())])


gap = losses("base1304_len8192.log") - losses("base100000_len8192.log")
step = np.arange(1, len(gap) + 1) * 10
windows = {end: gap[(step > end - 50) & (step <= end)].mean() for end in range(250, 451, 50)}
print("gap, mean per 50 steps ending at", {e: round(float(v), 3) for e, v in windows.items()})
fit = step >= 150
slope, intercept = np.polyfit(np.log(step[fit]), np.log(gap[fit]), 1)
rate, start = np.polyfit(step[fit], np.log(gap[fit]), 1)
for name, at in (("power law", lambda s: np.exp(intercept) * s**slope), ("exponential", lambda s: np.exp(start + rate * s))):
    print(f"{name}: {at(450):.3f} at step 450, {at(1000):.3f} at step 1,000")
kjv = np.log(15.86 / 9.84)  # part b1's ppl_8K, beta3 over the control (cells/base/*/eval.csv)
ratio = kjv / windows[450]
print(f"KJV gap {kjv:.3f} = {ratio:.2f} x the training gap; a training gap of 0.09-0.17 gives "
      f"{np.exp(ratio * 0.09):.2f}-{np.exp(ratio * 0.17):.2f}")

# The outcome (PLAN.md, "Part b1x"): the same gap in part b1x's logs, 1,000 steps on the fast path.
B1X = Path(__file__).parent / "part_b1x/logs/finetune/smollm2/steps1000"
if B1X.is_dir():
    small, control = (losses(name, B1X) for name in ("base1304_len8192.log", "base100000_len8192.log"))
    gap = small - control
    step = np.arange(1, len(gap) + 1) * 10
    print("b1x gap, mean per 50 steps ending at",
          {end: round(float(gap[(step > end - 50) & (step <= end)].mean()), 3) for end in range(450, 1001, 50)})
    last = step > 950
    print(f"b1x steps 951-1,000: beta3 {small[last].mean():.3f}, control {control[last].mean():.3f}")
    kjv = np.log(16.11 / 11.98)  # part b1x's ppl_8K (cells/steps1000/*/eval.csv)
    print(f"b1x KJV gap {kjv:.3f} = {kjv / gap[last].mean():.2f} x the training gap of steps 951-1,000")
    seconds = [float(re.search(r"'train_runtime': '([0-9.]+)'", (B1X / n).read_text())[1])
               for n in ("base1304_len8192.log", "base100000_len8192.log")]
    print(f"b1x train_runtime {seconds}: side by side {2 * 1000 * 8 * 8192 / max(seconds):,.0f} tokens/s together, "
          f"{2 * 1000 * 8 * 8192 / max(seconds) / 188858:.2f} x train7's one alone")

# The outcome of part b2x (PLAN.md, "Part b2x"): base 500 and the control again, the same 1,000 steps.
B2X = Path(__file__).parent / "part_b2x/logs/finetune/smollm2/steps1000"
if B1X.is_dir() and B2X.is_dir():
    small, control = (losses(name, B2X) for name in ("base500_len8192.log", "base100000_len8192.log"))
    gap = small - control
    step = np.arange(1, len(gap) + 1) * 10
    last = step > 950
    print("b2x gap (500 - control), mean per 50 steps ending at",
          {end: round(float(gap[(step > end - 50) & (step <= end)].mean()), 3) for end in range(450, 1001, 50)})
    beta3 = losses("base1304_len8192.log", B1X)
    print(f"b2x steps 951-1,000: 500 {small[last].mean():.3f}, control {control[last].mean():.3f}; "
          f"500 - beta3 (b1x) {(small[last] - beta3[last]).mean():.3f}")
    first = losses("base100000_len8192.log", B1X)
    worst = int(np.abs(control - first).argmax())
    print(f"the two controls' logged losses (b1x, b2x): at most {np.abs(control - first).max():.3f} apart "
          f"(step {step[worst]}, {np.abs(control - first)[worst] / first[worst]:.1%})")
    seconds = [float(re.search(r"'train_runtime': '([0-9.]+)'", (B2X / n).read_text())[1])
               for n in ("base500_len8192.log", "base100000_len8192.log")]
    print(f"b2x train_runtime {seconds}: side by side {2 * 1000 * 8 * 8192 / max(seconds):,.0f} tokens/s together")
