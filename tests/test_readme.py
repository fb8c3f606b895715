"""The README's library example runs as written and means what it says."""

from __future__ import annotations

from pathlib import Path

import torch

import apo

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block_after(heading: str) -> str:
    text = README.read_text()
    assert heading in text, heading
    return text.split(heading, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def test_library_example_runs():
    torch.manual_seed(0)
    scope: dict = {}
    exec(_python_block_after("## The library"), scope)  # noqa: S102 - the README's own code
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
