"""The numbers of PLAN.md's amendment 1, "The adaptation forecast", from part b1's published training logs.

    python docs/results/smollm2_small/adaptation_forecast.py

The gap is beta3's logged training loss minus the control's (`'loss'` every 10 steps); the fits use steps 150-450.
"""

import re
from pathlib import Path

import numpy as np

LOGS = Path(__file__).parent / "part_b1/logs/finetune/smollm2/base"


def losses(name: str) -> np.ndarray:
    return np.array([float(x) for x in re.findall(r"'loss': '([0-9.]+)'", (LOGS / name).read_text())])


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
