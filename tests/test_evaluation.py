"""Coverage measures of evaluation (pass@k, distinct answers, token entropy) and the partial-credit arithmetic reward,
checked against hand-computed values. CPU, offline."""

from __future__ import annotations

import json
import math

import pytest
import torch

from apo.cli.main import main
from apo.tasks.evaluation import (
    distinct_answers,
    eval_pass_ks,
    mean_token_entropy,
    pass_at_k,
    pass_at_k_per_prompt,
    token_entropy_recorder,
)
from apo.tasks.rewards import arithmetic_reward, digits_right, load_reward


def test_pass_at_k_matches_hand_computed_values():
    # n = 5 samples, c = 2 correct: pass@k = 1 - C(3, k) / C(5, k)
    assert pass_at_k(5, 2, 1) == pytest.approx(2 / 5)  # 1 - 3/5
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)  # 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert pass_at_k(5, 2, 4) == 1.0  # n - c = 3 < 4: every 4-subset holds a correct sample
    assert pass_at_k(5, 2, 5) == 1.0
    # n = 10, c = 1: 1 - C(9, 3)/C(10, 3) = 1 - 84/120 = 0.3 (= k/n for one correct sample)
    assert pass_at_k(10, 1, 3) == pytest.approx(0.3)
    # n = 4, c = 3, k = 2: 1 - C(1,2)/C(4,2) = 1 - 0/6 = 1
    assert pass_at_k(4, 3, 2) == 1.0
    assert [pass_at_k(4, 0, k) for k in range(1, 5)] == [0.0] * 4
    assert [pass_at_k(4, 4, k) for k in range(1, 5)] == [1.0] * 4


def test_pass_at_k_is_stable_for_large_n_and_tiny_values():
    # exact integers, one division: 1/1000 comes out as the correctly rounded float, no cancellation
    assert pass_at_k(1000, 1, 1) == 0.001
    # n = 1000, c = 1, k = 500: 1 - C(999,500)/C(1000,500) = 1 - 500/1000
    assert pass_at_k(1000, 1, 500) == 0.5
    # n = 10000, c = 3, k = 5000: 1 - (5000 * 4999 * 4998) / (10000 * 9999 * 9998); C(10000, 5000) has 3,008 digits
    expected = 1 - (5000 * 4999 * 4998) / (10000 * 9999 * 9998)
    assert pass_at_k(10000, 3, 5000) == pytest.approx(expected, rel=1e-14)
    # monotone in k
    values = [pass_at_k(16, 3, k) for k in range(1, 17)]
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))


@pytest.mark.parametrize("n, c, k", [(0, 0, 1), (4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


def test_pass_at_k_per_prompt_counts_only_full_credit():
    # prompt 0: rewards 1, 0.5, 0, 1 -> c = 2 of 4 (0.5 is partial credit, not a pass); prompt 1: none right
    per_prompt = pass_at_k_per_prompt([[1.0, 0.5, 0.0, 1.0], [0.5, 0.5, 0.0, 0.0]], [1, 2, 4])
    assert per_prompt[1] == [0.5, 0.0]
    assert per_prompt[2] == [pytest.approx(1 - 1 / 6), 0.0]  # 1 - C(2,2)/C(4,2)
    assert per_prompt[4] == [1.0, 0.0]


def test_distinct_answers_reads_the_answer_not_the_text():
    # "95", "95 " and "95.0" are one answer; "85" another; "" and "x" have no number: their text
    assert distinct_answers([["95", "95 ", "95.0", "85"], ["", "x", "x", ""]]) == [2, 2]
    assert distinct_answers([["The answer is 7.", "so 7", "\\boxed{8}"]], "auto") == [2]


def test_eval_pass_ks_defaults_to_every_k_and_names_the_keys():
    assert eval_pass_ks(4, None) == [1, 2, 3, 4]
    assert eval_pass_ks(8, [8, 1, 1]) == [1, 8]
    with pytest.raises(ValueError, match=r"config key 'pass_at_k': k=\[16\] needs 1 <= k <= eval_samples=4"):
        eval_pass_ks(4, [1, 16])


def test_token_entropy_recorder_uses_the_sampling_temperature():
    recorder = token_entropy_recorder(temperature=0.5)
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0) / 2, 0.0]])  # row 1 at T = 0.5: p = (3/4, 1/4)
    assert recorder(None, logits) is logits
    recorder(None, torch.zeros(2, 2))
    ent_BT = recorder.entropies_BT()
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # 0.5623
    assert ent_BT.shape == (2, 2)
    assert ent_BT[0].tolist() == pytest.approx([math.log(2), math.log(2)])
    assert ent_BT[1, 0].item() == pytest.approx(h, abs=1e-6)
    # row 1 is one token long: only its first step counts
    assert mean_token_entropy(ent_BT, [2, 1]) == pytest.approx([math.log(2), h], abs=1e-6)


def test_digits_right_and_partial_credit():
    assert digits_right(85, 95) == 0.5  # a dropped carry: units right, tens wrong
    assert digits_right(95, 95) == 1.0
    assert digits_right(95, 195) == pytest.approx(2 / 3)  # "59" against "591": 2 of 3 positions
    assert digits_right(5, 95) == 0.5
    assert digits_right(-95, 95) == 0.0
    scores = arithmetic_reward(["95", "85", "12", "x", "9.5"], answer=["95"] * 5, partial_credit=0.5)
    # right 1.0; 85: 0.5 * 1/2; 12: 0.5 * 0/2; no number 0; 9.5 is not an integer: 0
    assert scores == [1.0, 0.25, 0.0, 0.0, 0.0]
    assert arithmetic_reward(["85"], answer=["95"]) == [0.0]  # default: binary
    assert load_reward("arithmetic", partial_credit=0.5)(["85"], answer=["95"]) == [0.25]
    with pytest.raises(ValueError, match=r"partial_credit=1.5: must be in \[0, 1\]"):
        arithmetic_reward(["85"], answer=["95"], partial_credit=1.5)
    with pytest.raises(ValueError, match="reward='math' takes no partial_credit"):
        load_reward("math", partial_credit=0.5)


def test_pass_at_k_above_the_default_eval_samples_is_a_one_line_error(capsys, tmp_path):
    # eval_samples unset: its default (4) is the bound; the other bad values are cases of tests/reliability_cases.py
    code = main(["train", f"output_dir={tmp_path / 'r'}", "pass_at_k=[16]"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "config key 'pass_at_k': k=[16] needs 1 <= k <= eval_samples=4" in err
    assert not (tmp_path / "r").exists()


def test_eval_reports_pass_at_k_entropy_and_distinct_answers(capsys, tmp_path):
    out = tmp_path / "eval.json"
    # 3 generation batches (3 + 3 + 2 prompts): the measures must follow each prompt's samples across batches
    assert main(["eval", "eval_size=8", "eval_samples=4", "eval_batch_size=3", f"--out={out}"]) == 0
    capsys.readouterr()
    result = json.loads(out.read_text())
    passes = result["pass_at_k"]
    assert list(passes) == ["1", "2", "3", "4"] and set(result["pass_at_k_ci95"]) == set(passes)
    # binary reward: pass@1 is the mean reward, pass@n is "at least one of n right"
    assert passes["1"] == pytest.approx(result["reward"])
    assert passes["4"] == pytest.approx(result["pass_at_least_one"])
    assert all(a <= b + 1e-12 for a, b in zip(passes.values(), list(passes.values())[1:], strict=False))
    per_prompt = result["prompt_distinct_answers"]  # each prompt has 1 to 4 distinct answers among its 4 samples
    assert len(per_prompt) == 8 and all(1 <= d <= 4 for d in per_prompt)
    assert result["distinct_answers"] == pytest.approx(sum(per_prompt) / 8)
    assert 0.0 < result["token_entropy"] < math.log(19)  # the tiny model's 19-symbol vocabulary


def _fake_eval(passes, distinct, entropy, ci=None):
    result = {"reward": passes["1"], "pass_at_k": passes, "distinct_answers": distinct, "token_entropy": entropy}
    result |= {"pass_at_k_ci95": ci or dict.fromkeys(passes, 0.05), "distinct_answers_ci95": 0.1}
    result |= {"token_entropy_ci95": 0.01}
    return result


def test_coverage_table_and_pass_at_k_plot_of_synthetic_runs(tmp_path):
    from apo.cli import compare

    before = {"1": 0.3, "2": 0.5, "4": 0.7}
    for seed, (p1, p4) in enumerate([(0.5, 0.7), (0.6, 0.8), (0.7, 0.9)]):
        d = tmp_path / f"grpo-seed{seed}"
        (d / "eval_before.json").parent.mkdir(parents=True, exist_ok=True)
        (d / "eval_before.json").write_text(json.dumps(_fake_eval(before, 3.0, 1.0)))
        after = _fake_eval({"1": p1, "2": p1, "4": p4}, 1.0 + seed, 0.5)
        (d / "eval_after.json").write_text(json.dumps(after))
        (d / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward": p1, "entropy": 0.5}) + "\n")
    d = tmp_path / "adpo-seed0"  # one run: the interval is its own, over prompts
    (d / "eval_before.json").parent.mkdir(parents=True)
    (d / "eval_before.json").write_text(json.dumps(_fake_eval(before, 3.0, 1.0)))
    (d / "eval_after.json").write_text(json.dumps(_fake_eval({"1": 0.4, "2": 0.6, "4": 0.8}, 2.5, 0.9)))
    (d / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward": 0.4, "entropy": 0.9}) + "\n")
    compare.plot_comparison([tmp_path], tmp_path / "out")
    table = json.loads((tmp_path / "out" / "coverage.json").read_text())
    g = table["grpo"]
    assert g["runs"] == 3 and g["over"] == "seeds" and g["ks"] == ["1", "2", "4"]
    # pass@1 after: 0.5, 0.6, 0.7 -> mean 0.6, s = 0.1, half-width t_{0.975,2} * 0.1 / sqrt(3) = 4.3027 * 0.057735
    assert g["pass_at_1_after"] == pytest.approx([0.6, 0.24841], abs=1e-5)
    assert g["pass_at_max_after"][0] == pytest.approx(0.8)
    assert g["distinct_answers_after"][0] == pytest.approx(2.0)  # 1, 2, 3
    assert g["pass_at_1_before"] == pytest.approx([0.3, 0.0])
    a = table["adpo"]
    assert a["over"] == "prompts" and a["pass_at_1_after"] == [0.4, 0.05] and a["token_entropy_after"] == [0.9, 0.01]
    md = (tmp_path / "out" / "coverage.md").read_text()
    assert "| grpo | 3 | seeds | 0.300 ± 0.000 → 0.600 ± 0.248 |" in md
    assert (tmp_path / "out" / "passk.png").stat().st_size > 1000


def test_partial_credit_reaches_the_evaluation(capsys, tmp_path):
    binary, partial = tmp_path / "binary.json", tmp_path / "partial.json"
    assert main(["eval", "eval_size=8", "eval_samples=4", f"--out={binary}"]) == 0
    assert main(["eval", "eval_size=8", "eval_samples=4", "partial_credit=0.5", f"--out={partial}"]) == 0
    capsys.readouterr()
    b, p = json.loads(binary.read_text()), json.loads(partial.read_text())
    # same samples (same seed): a right answer scores 1 in both, a wrong one 0 or up to 0.5 with partial credit
    assert all(y >= x for x, y in zip(b["prompt_rewards"], p["prompt_rewards"], strict=True))
    assert p["reward"] > b["reward"] and p["reward"] <= b["reward"] + 0.5 * (1 - b["reward"])
    assert p["pass_at_k"] == b["pass_at_k"]  # pass@k counts full credit only
