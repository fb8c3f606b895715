"""verl ``custom_reward_function`` for the tiny arithmetic run: ``apo.tasks.rewards.arithmetic_reward`` on one
response (1.0 when its first number is the answer; a wrong number earns up to 0.5 for the digits it gets right, so
groups of a weak model have reward variance)."""

from __future__ import annotations

from apo.tasks.rewards import arithmetic_reward

PARTIAL_CREDIT = 0.5


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """The reward of one response ``solution_str`` for the answer ``ground_truth``."""
    return arithmetic_reward([solution_str], [ground_truth], partial_credit=PARTIAL_CREDIT)[0]
