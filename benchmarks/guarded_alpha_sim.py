"""What the guarded alpha schedule (:class:`apo.GuardedAlpha`) does on synthetic reward streams, confidence c_t = 1.

    python benchmarks/guarded_alpha_sim.py [--seeds 20] [--steps 200]

Each step draws ``N`` binary rewards with success rate ``m_t`` and calls ``GuardedAlpha.update`` with them (so
``s_R`` is the pooled spread of individual rewards) and ``confidence=1``. Streams:

* ``flat``: ``m_t = 0.6`` (N = 128, 64, 16);
* ``rise+0.01`` / ``rise+0.02``: ``m_t`` rises from 0.2 / 0.1 by 0.01 / 0.02 per step to 0.9, then stays (N = 128);
* ``gauss``: ``step(0.6 + N(0, 0.03), 1)`` with no ``reward_std`` (``s_R`` stays at ``reward_scale`` = 0.5).

Printed per stream, over seeds: the mean alpha over steps 50..end (flat) or over the last 10 rising steps, the lowest
alpha of any step of any seed, and for the rises the steps after the rise stops until alpha is back above 0.87.
``--old`` runs Algorithm 1's literal reading instead (``b_0 = 0``, ``s_R`` = running std of the mean rewards after
0.5) for comparison.
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch

from apo.core.schedules import GuardedAlpha


class _LiteralGuarded:
    """Algorithm 1 as written: ``b_0 = 0``; ``s_R`` = 0.5, then the unbiased std of the past mean rewards."""

    def __init__(self):
        self.alpha, self.b, self.past = 0.9, 0.0, []

    def step(self, r: float, c: float, reward_std: float | None = None) -> float:
        s = statistics.stdev(self.past) if len(self.past) >= 2 and statistics.stdev(self.past) > 0 else 0.5
        p = max(0.0, math.tanh((r - self.b) / s))
        self.b = 0.9 * self.b + 0.1 * r
        self.alpha = 0.9 * self.alpha + 0.1 * (0.9 - 0.55 * c * p)
        self.past.append(r)
        return self.alpha


def run(stream: str, n: int, seed: int, steps: int, old: bool) -> tuple[list[float], int]:
    """alpha_1..alpha_steps for one stream and seed; also the step at which the rise ends (0 if none)."""
    g = torch.Generator().manual_seed(seed)
    s = _LiteralGuarded() if old else GuardedAlpha()
    start, rate = {"rise+0.01": (0.2, 0.01), "rise+0.02": (0.1, 0.02)}.get(stream, (0.6, 0.0))
    top = int(round((0.9 - start) / rate)) if rate else 0
    alphas = []
    for t in range(steps):
        m = min(start + rate * t, 0.9) if rate else start
        if stream == "gauss":
            alphas.append(s.step(0.6 + 0.03 * float(torch.randn((), generator=g)), 1.0))
            continue
        rewards = (torch.rand(n, generator=g) < m).double()
        std = float(rewards.std())
        alphas.append(s.step(float(rewards.mean()), 1.0, reward_std=std))
    return alphas, top


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--old", action="store_true")
    args = ap.parse_args()
    cases = [("flat", 128), ("flat", 64), ("flat", 16), ("gauss", 128), ("rise+0.01", 128), ("rise+0.02", 128)]
    for stream, n in cases:
        runs = [run(stream, n, seed, args.steps, args.old) for seed in range(args.seeds)]
        lowest = min(min(a) for a, _ in runs)
        first25 = min(min(a[:25]) for a, _ in runs)
        if stream in ("flat", "gauss"):
            settled = statistics.mean(statistics.mean(a[50:]) for a, _ in runs)
            print(
                f"{stream:10s} N={n:3d}  settled alpha {settled:.3f}  lowest {lowest:.3f}  lowest in steps 1-25 "
                f"{first25:.3f}"
            )
            continue
        top = runs[0][1]
        rising = statistics.mean(statistics.mean(a[top - 10 : top]) for a, _ in runs)
        at_top = [a[top - 1] for a, _ in runs]
        back = [next((k for k, x in enumerate(a[top:]) if x >= 0.87), -1) for a, _ in runs]
        print(
            f"{stream:10s} N={n:3d}  rise ends at step {top}; alpha over its last 10 steps {rising:.3f}, at its "
            f"end {min(at_top):.3f}-{max(at_top):.3f}; lowest {lowest:.3f}; back >= 0.87 after "
            f"{min(back)}-{max(back)} steps"
        )


if __name__ == "__main__":
    main()
