"""The statistics of runs and comparisons: 95% t-intervals of a mean, of a difference of means and of a slope,
trailing moving averages, and whether a run held on to what it learned. Pure Python on lists of floats (no numpy, no
matplotlib), so figures (:mod:`apo.cli.plots`), a run's ``summary.json`` and evaluations (:mod:`apo.cli.run`,
:mod:`apo.tasks.evaluate`), scripts and tests compute them alike.
"""

from __future__ import annotations

import math

SMOOTH_WINDOW = 10
"""Steps in the trailing moving average of the training reward (figures and table)."""

CONFIDENCE = 0.95

# Two-sided 97.5% quantiles of Student's t with df = 1..30 degrees of freedom.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """``t_{0.975, df}``: exact to 4 decimals for ``df <= 30``; above, the Cornish-Fisher expansion
    ``z + (z^3 + z) / (4 df) + (5 z^5 + 16 z^3 + 3 z) / (96 df^2)`` with ``z = 1.959964`` (error < 1e-4)."""
    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: list[float]) -> tuple[float, float, int]:
    """``(mean, half_width, n)`` of the 95% t-interval ``mean +- t_{0.975, n-1} * s / sqrt(n)`` (``s``: the sample
    standard deviation with ``n - 1``). ``half_width`` is NaN for ``n = 1``; both are NaN for ``n = 0``."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    m = sum(values) / n
    if n == 1:
        return m, math.nan, 1
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, t_quantile_975(n - 1) * s / math.sqrt(n), n


def welch_interval(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """``(mean(xs) - mean(ys), half_width)`` of the Welch 95% interval of a difference of means:
    ``se^2 = s_x^2 / n_x + s_y^2 / n_y``, ``df = se^4 / ((s_x^2 / n_x)^2 / (n_x - 1) + (s_y^2 / n_y)^2 / (n_y - 1))``
    (Welch-Satterthwaite, rounded down: conservative), ``half_width = t_{0.975, df} * se``. ``half_width`` is NaN
    with fewer than 2 values on a side, and 0 when both samples are constant."""
    nx, ny = len(xs), len(ys)
    if nx == 0 or ny == 0:
        return math.nan, math.nan
    mx, my = sum(xs) / nx, sum(ys) / ny
    if nx < 2 or ny < 2:
        return mx - my, math.nan
    vx = sum((x - mx) ** 2 for x in xs) / (nx - 1) / nx
    vy = sum((y - my) ** 2 for y in ys) / (ny - 1) / ny
    se2 = vx + vy
    if se2 == 0:
        return mx - my, 0.0
    df = se2**2 / (vx**2 / (nx - 1) + vy**2 / (ny - 1))
    return mx - my, t_quantile_975(max(1, math.floor(df))) * math.sqrt(se2)


def moving_average(xs: list[float], window: int = SMOOTH_WINDOW) -> list[float]:
    """Trailing moving average: ``y_t = mean(x_{max(0, t-window+1)}, ..., x_t)`` (a shorter window at the start)."""
    out, acc = [], 0.0
    for t, x in enumerate(xs):
        acc += x
        if t >= window:
            acc -= xs[t - window]
        out.append(acc / min(t + 1, window))
    return out


def slope_interval(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """``(b, half_width)`` of the least-squares slope of ``y = a + b x`` with its 95% t-interval:
    ``b = S_xy / S_xx``, ``se(b)^2 = (sum_i r_i^2 / (n - 2)) / S_xx`` with residuals ``r_i = y_i - a - b x_i``,
    ``half_width = t_{0.975, n-2} * se(b)``; ``S_xx = sum (x - mean x)^2``, ``S_xy = sum (x - mean x)(y - mean y)``.
    ``xs``, ``ys``: ``n`` paired values (one run each). NaN half-width for ``n < 3``; both NaN when every ``x`` is
    equal."""
    n = len(xs)
    if n != len(ys):
        raise ValueError(f"slope_interval: {n} x values but {len(ys)} y values")
    if n < 2:
        return math.nan, math.nan
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return math.nan, math.nan
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    if n < 3:
        return b, math.nan
    a = my - b * mx
    rss = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return b, t_quantile_975(n - 2) * math.sqrt(rss / (n - 2) / sxx)


def metric(row: dict, key: str) -> float | None:
    """``row[key]``, except that ``"reward"`` means the mean reward the step trained on: ``reward_zeroed`` when the
    run zeroed cut completions (``truncated_completions: zero``; TRL's ``reward`` is then the graded one), else
    ``reward``. ``None`` when not logged."""
    if key == "reward" and "reward_zeroed" in row:
        return row["reward_zeroed"]
    return row.get(key)


def stability_stats(rows: list[dict], *, window: int = SMOOTH_WINDOW) -> dict:
    """Whether a run held on to what it learned, from its ``metrics.jsonl`` rows (training reward: :func:`metric`).

    The training reward is logged once per rollout: ``n`` values ``y_1 .. y_n`` (``n`` = steps / k when a rollout
    feeds ``k`` optimizer steps). With ``w = min(window, max(1, n // 4))`` (so that a run with few rollouts still
    has a start and an end that do not overlap) and ``s_t`` the mean of ``y_{t-w+1} .. y_t`` for ``t >= w``:

    - ``peak_train_reward = max_t s_t``; ``final_train_reward = s_n``;
    - ``drop_from_peak = max_t s_t - s_n`` (>= 0; what the run lost after its best point);
    - ``collapsed``: ``s_n < s_w``, the last ``w`` logged rewards below the first ``w`` (the run ended worse than it
      started); ``None`` without rewards.
    """
    ys = [metric(r, "reward") for r in rows if "reward" in r]
    if not ys:
        return {"peak_train_reward": None, "final_train_reward": None, "drop_from_peak": None, "collapsed": None}
    w = min(window, max(1, len(ys) // 4))
    smooth = moving_average(ys, w)[w - 1 :]  # full windows only
    return {
        "peak_train_reward": max(smooth),
        "final_train_reward": smooth[-1],
        "drop_from_peak": max(smooth) - smooth[-1],
        "collapsed": smooth[-1] < smooth[0],
    }


def nan_to_none(x: float) -> float | None:
    """``None`` for NaN (JSON has no NaN), ``x`` otherwise."""
    return None if math.isnan(x) else x


def pointwise_mean_ci(series: list[list[float]]) -> list[tuple[float, float, int]]:
    """:func:`mean_ci` at each position of ``series`` (one list per run, all of one length): the mean over runs at
    each step with its 95% t half-width (a figure's band)."""
    return [mean_ci([ys[i] for ys in series]) for i in range(len(series[0]) if series else 0)]
