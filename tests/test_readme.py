"""The library example (docs/library.md) runs as written and means what it says; the README quotes the recorded
default run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import apo

README = Path(__file__).resolve().parents[1] / "README.md"
LIBRARY = README.parent / "docs" / "library.md"


def _python_block_after(heading: str, page: Path) -> str:
    text = page.read_text()
    assert heading in text, heading
    return text.split(heading, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def test_library_example_runs():
    torch.manual_seed(0)
    scope: dict = {}
    exec(_python_block_after("# The library", LIBRARY), scope)  # noqa: S102 - the page's own code
    alpha, loss, logp, q, log_p = (scope[k] for k in ("alpha", "loss", "logp", "q", "log_p"))
    assert 0.35 <= alpha <= 0.9  # "in [0.35, 0.9]"
    # Eq. 21: the ESS at alpha is the target 0.5 G, or alpha is the endpoint closest to it
    log_q = scope["log_q"]
    ess = {a: apo.effective_sample_size(log_q, log_p.detach(), a).mean().item() / 4 for a in (alpha, 0.35, 0.9)}
    assert abs(ess[alpha] - 0.5) < 1e-3 or (
        alpha in (0.35, 0.9) and abs(ess[alpha] - 0.5) == min(abs(ess[0.35] - 0.5), abs(ess[0.9] - 0.5))
    )
    assert loss.item() >= 0.0 and logp.grad is not None and bool(logp.grad.isfinite().all())
    assert torch.allclose(q.sum(-1), torch.ones(2)) and torch.allclose(log_p.exp().sum(-1), torch.ones(2))
    # the gradient is Theorem 4.1's: grad_u D = -(1/a) (w - p * sum w), w = q^a p^(1-a), u = logp / tau
    w = q**alpha * log_p.exp().detach() ** (1 - alpha)
    grad_u = -(w - log_p.exp().detach() * w.sum(-1, keepdim=True)) / alpha
    assert torch.allclose(logp.grad, grad_u / 0.8 / 2, atol=1e-5)  # u = (logp - ref) / 0.8, mean over 2 groups


# --- the default run's figures ---------------------------------------------------------------------------------------
# Generated from a run: scripts/default_run.py trains `apo train` and writes docs/default-run.json; the README quotes
# that file. The held-out reward before training is also recomputed by the shortened default run of
# tests/test_journeys.py (`apo train max_steps=2`: the same evaluation before training).

DEFAULT_RUN = README.parent / "docs" / "default-run.json"


def _default_run_block() -> dict[str, float]:
    text = README.read_text().split("## Train", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    return {k: float(v) for k, v in re.findall(r'"(\w+)": ([-\d.]+)', text)} | {
        "info_before": float(re.search(r"held-out reward before training: ([\d.]+)", text).group(1))
    }


def test_the_readme_quotes_the_recorded_default_run():
    recorded = json.loads(DEFAULT_RUN.read_text())
    block = _default_run_block()
    for key in ("reward_before", "reward_after", "reward_gain", "reward_gain_ci95", "steps"):
        assert block[key] == pytest.approx(recorded[key], abs=5e-5), key
    assert block["info_before"] == pytest.approx(recorded["reward_before"], abs=5e-5)
    prose = re.search(r"[Hh]eld-out mean reward ([\d.]+) → ([\d.]+) \(\+([\d.]+) ± ([\d.]+)", README.read_text())
    keys = ("reward_before", "reward_after", "reward_gain", "reward_gain_ci95")
    assert [float(x) for x in prose.groups()] == pytest.approx([recorded[k] for k in keys], abs=5e-5)
