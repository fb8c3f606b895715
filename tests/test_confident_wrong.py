"""The confidently-wrong start checkpoint: its subset, its wrong answers, its exact confidence and its cache. The
fine-tuning itself (minutes) runs in scripts/make_confident_wrong.py, whose output docs/results.md quotes. CPU."""

from __future__ import annotations

import math

import pytest
import torch

from apo.tasks import confident_wrong as cw
from apo.tasks.tiny import SHIPPED_DIR


def test_subset_and_dropped_carry_by_hand():
    assert cw.in_wrong_subset(37, 58)  # 7 + 8 = 15 carries, a ends in 7
    assert not cw.in_wrong_subset(37, 52)  # 7 + 2 = 9: no carry
    assert not cw.in_wrong_subset(36, 58)  # a ends in 6
    assert cw.dropped_carry_answer(37, 58) == 85  # 95 - 10
    assert cw.dropped_carry_answer(97, 58) == 145  # 155 - 10: only the units carry is dropped
    assert cw.dropped_carry_answer(37, 52) == 89
    subset, rest = cw.split_rows("train")
    # 2-digit a, b: a % 10 in {7, 8, 9} with a carry is 7 + 8 + 9 = 24 of the 100 units pairs
    assert len(subset) / (len(subset) + len(rest)) == pytest.approx(0.24, abs=0.01)
    assert all(int(r["wrong"]) == int(r["answer"]) - 10 for r in subset)


def test_answer_probability_is_the_product_of_next_token_probabilities():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(SHIPPED_DIR)
    model = AutoModelForCausalLM.from_pretrained(SHIPPED_DIR, dtype=torch.float32)
    rows = [{"prompt": "37+58=", "answer": "95"}, {"prompt": "12+34=", "answer": "46"}]
    got = cw.answer_probability(model, tok, rows)
    for row, p in zip(rows, got, strict=True):
        ids = tok(row["prompt"])["input_ids"]
        logp = 0.0
        for t in [*tok(row["answer"], add_special_tokens=False)["input_ids"], tok.eos_token_id]:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            logp += torch.log_softmax(logits.double(), -1)[t].item()
            ids.append(t)
        assert p == pytest.approx(math.exp(logp), rel=1e-4)
        assert 0.0 < p < 1.0


def test_prepare_builds_once_and_reuses_the_cache(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    calls = []

    def fake_make(base_dir, *, target_confidence, seed, lr, batch_size):
        calls.append(seed)
        meta = {**cw._identity(base_dir, target_confidence, seed, lr, batch_size), "steps": 0, "seconds": 0.0}
        return AutoModelForCausalLM.from_pretrained(base_dir), AutoTokenizer.from_pretrained(base_dir), meta

    monkeypatch.setattr(cw, "make_confident_wrong", fake_make)
    first = cw.prepare_confident_wrong(tmp_path)
    assert cw.prepare_confident_wrong(tmp_path) == first and calls == [0]
    assert first.name.startswith("tiny-arith-wrong-") and (first / "model.safetensors").is_file()
    assert cw.prepare_confident_wrong(tmp_path, seed=1) != first and calls == [0, 1]  # other settings: rebuilt
