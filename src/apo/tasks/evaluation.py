"""Coverage measures of a sampled evaluation: pass@k, distinct answers, the policy's token entropy.

Mode-seeking updates raise pass@1 and can lower pass@k at large k (the policy concentrates on fewer answers);
mode-covering updates should keep it. These functions turn the ``n`` scored samples per prompt of an evaluation into
those measures; :func:`apo.tasks.evaluate.evaluate` reports them with 95% intervals over prompts.

A sample is *correct* when its reward is full credit, ``reward >= 1`` (:data:`FULL_CREDIT`): for the binary rewards
of this package that is ``reward == 1``, and a partial-credit reward (``partial_credit`` > 0) does not make a near
miss count as a pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

FULL_CREDIT = 1.0
"""The reward at or above which a sample counts as correct for pass@k."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from ``n`` samples of which ``c`` are correct (Chen et al. 2021, Eq. 1):

        pass@k = 1 - C(n - c, k) / C(n, k)

    the probability that a draw of ``k`` of the ``n`` samples without replacement holds at least one correct one.
    Computed as ``(C(n, k) - C(n - c, k)) / C(n, k)`` on Python's exact integers, so the one rounding is the final
    division (no cancellation when the result is tiny, no overflow for large ``n``). ``C(n - c, k) = 0`` when
    ``n - c < k``, which gives 1.0. ``k = 1`` gives ``c / n``; ``k = n`` gives ``1.0 if c > 0 else 0.0``.

    Raises:
        ValueError: ``n < 1``, ``c`` outside ``[0, n]`` or ``k`` outside ``[1, n]``.
    """
    if n < 1:
        raise ValueError(f"pass_at_k: n={n} samples; need n >= 1")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c={c} correct of n={n}; need 0 <= c <= n")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k={k} with n={n} samples; need 1 <= k <= n (raise eval_samples)")
    total = math.comb(n, k)
    return (total - math.comb(n - c, k)) / total


def pass_at_k_per_prompt(scores_PN: Sequence[Sequence[float]], ks: Sequence[int]) -> dict[int, list[float]]:
    """``{k: [pass@k of prompt j for j in 0..P-1]}`` from ``scores_PN``, the ``N`` rewards of each of ``P`` prompts
    (a sample is correct when its reward is ``>= FULL_CREDIT``). The prompts are the units of the interval over
    prompts that the caller computes; samples of one prompt are not independent."""
    out: dict[int, list[float]] = {k: [] for k in ks}
    for scores in scores_PN:
        n, c = len(scores), sum(s >= FULL_CREDIT for s in scores)
        for k in ks:
            out[k].append(pass_at_k(n, c, k))
    return out


def answer_key(text: str, answer_format: str | None = None) -> str:
    """The answer a completion gives, normalised so that equal answers compare equal: the first number for the
    arithmetic task's format (``answer_format=None``), else :func:`apo.tasks.grading.extract_answer`; a number is
    written in lowest terms (``"95.0"`` and ``"95"`` are one answer); a completion without an extractable answer
    is its stripped text."""
    from apo.tasks.grading import extract_answer, first_number, parse_number

    pred = first_number(text) if answer_format is None else extract_answer(text, answer_format)
    if pred is None:
        return text.strip()
    value = parse_number(pred) if len(pred) <= 64 else None
    return pred.strip() if value is None else str(value)


def distinct_answers(texts_PN: Sequence[Sequence[str]], answer_format: str | None = None) -> list[int]:
    """``[P]``: the number of distinct answers (:func:`answer_key`) among each prompt's ``N`` completions, in
    ``1..N``. 1 means the policy gives one answer to that prompt every time (collapsed onto one mode)."""
    return [len({answer_key(t, answer_format) for t in texts}) for texts in texts_PN]


def eval_pass_ks(samples: int, pass_ks: Sequence[int] | None) -> list[int]:
    """The k of pass@k an evaluation reports: ``pass_ks`` sorted, or every ``k`` in ``1..samples`` when it is empty
    or None.

    Raises:
        ValueError (one line, naming the keys): a ``k`` above ``samples`` or below 1.
    """
    if not pass_ks:
        return list(range(1, samples + 1))
    bad = [k for k in pass_ks if not 1 <= k <= samples]
    if bad:
        raise ValueError(
            f"config key 'pass_at_k': k={bad} needs 1 <= k <= eval_samples={samples}; raise eval_samples to "
            f"{max(max(bad), 1)} or drop those k"
        )
    return sorted(set(pass_ks))


def token_entropy_recorder(temperature: float):
    """A ``transformers`` logits processor that records, at every generation step, the entropy in nats of the
    sampling distribution ``softmax(logits / temperature)`` of each row (float32, ``[B]`` per step) and returns the
    logits unchanged. Custom processors run before ``generate``'s own temperature warper, hence the division here.
    ``recorder.entropies_BT()`` stacks them to ``[B, T]``; :func:`mean_token_entropy` averages the generated
    tokens."""
    import torch
    from transformers import LogitsProcessor

    class TokenEntropyRecorder(LogitsProcessor):
        def __init__(self):
            self.steps: list[torch.Tensor] = []

        def __call__(self, input_ids, scores):
            logp = torch.log_softmax(scores.float() / temperature, dim=-1)
            self.steps.append(-(logp.exp() * logp).nan_to_num().sum(-1).cpu())
            return scores

        def entropies_BT(self) -> torch.Tensor:
            return torch.stack(self.steps, dim=1) if self.steps else torch.zeros(0, 0)

    return TokenEntropyRecorder()


def mean_token_entropy(entropies_BT, lengths_B) -> list[float]:
    """``[B]``: mean over the first ``lengths_B[b]`` steps of row ``b`` of ``entropies_BT`` (the completion's own
    tokens, its EOS included; steps after it are padding); 0.0 for an empty completion."""
    out = []
    for row, n in zip(entropies_BT, lengths_B, strict=True):
        n = int(n)
        out.append(float(row[:n].double().mean()) if n > 0 else 0.0)
    return out
