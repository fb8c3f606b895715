r"""A labelled grading corpus: (completion, gold, expected score) cases written by hand, with the label a careful
human grader gives. Read by ``tests/test_grading_corpus.py`` and ``benchmarks/grading.py``.

Each case is ``Case(tag, completion, gold, expected, prompt="", answer_format=None)``; ``expected`` is 1.0 (credit)
or 0.0. ``answer_format=None`` grades with the reward's default (``auto``). Families list, for one gold answer, the
answers a model may give with their labels; each answer is graded in several wrappers (a box at the end of a short
solution, a final-answer sentence, an answer after a thinking trace). ``too_large`` cases are the documented class
that scores 0.0 because the expression is too large to verify, whatever its value.
"""

from __future__ import annotations

from typing import NamedTuple


class Case(NamedTuple):
    tag: str
    completion: str | list
    gold: str
    expected: float
    prompt: str = ""
    answer_format: str | None = None


CHAIN = "State the final answer to the following arithmetic problem: 4 - 1 - 7 ="
"""A reasoning-gym chain_sum prompt."""

# gold -> [(answer as written by a model, label)]
FAMILIES: dict[str, tuple[str, list[tuple[str, float]]]] = {
    "integer": ("42", [("42", 1), ("42.0", 1), ("041", 0), ("-42", 0), ("43", 0)]),
    # -14/2 and 6/8 are the value not carried to the end (MATH's answers are in lowest terms)
    "negative": ("-7", [("-7", 1), ("- 7", 1), ("−7", 1), ("7", 0), ("-\\frac{14}{2}", 0)]),
    "decimal": ("0.25", [("\\frac14", 1), ("1/4", 1), ("0.250", 1), ("0.2", 0), ("\\frac{1}{5}", 0)]),
    "fraction": (
        "\\frac{3}{4}",
        [
            ("\\dfrac{3}{4}", 1),
            ("\\tfrac34", 1),
            ("3/4", 1),
            ("0.75", 1),
            ("\\frac{6}{8}", 0),
            ("\\frac{4}{3}", 0),
            ("\\frac 34", 1),
            ("\\frac{3}{5}", 0),
        ],
    ),
    "half": ("0.5", [("\\frac{1}{2}", 1), ("\\dfrac12", 1), ("1/2", 1), ("0.55", 0)]),
    "mixed": ("2\\frac{1}{2}", [("\\frac{5}{2}", 1), ("2.5", 1), ("2\\frac12", 1), ("\\frac{1}{2}", 0)]),
    "radical": ("2\\sqrt{3}", [("2\\sqrt3", 1), ("\\sqrt{12}", 1), ("2 \\sqrt{3}", 1), ("3\\sqrt{2}", 0)]),
    "radical_frac": (
        "\\frac{\\sqrt{3}}{2}",
        [("\\dfrac{\\sqrt{3}}{2}", 1), ("\\frac{1}{2}\\sqrt{3}", 1), ("\\frac{\\sqrt{2}}{2}", 0)],
    ),
    "pi": ("4\\pi", [("4\\pi", 1), ("4 \\pi", 1), ("\\pi \\cdot 4", 1), ("12.566", 0), ("2\\pi", 0)]),
    "interval": (
        "(-\\infty, 3]",
        [("(-\\infty,3]", 1), ("\\left(-\\infty, 3\\right]", 1), ("(-\\infty, 3)", 0), ("[3, \\infty)", 0)],
    ),
    "tuple": ("(2, -1)", [("(2,-1)", 1), ("\\left( 2, -1 \\right)", 1), ("(-1, 2)", 0)]),
    "set": ("1, 2, 3", [("3, 2, 1", 1), ("\\{1, 2, 3\\}", 1), ("1, 2", 0)]),
    "degrees": ("30^\\circ", [("30", 1), ("30^{\\circ}", 1), ("30°", 1), ("60^\\circ", 0)]),
    "units": ("5\\text{ cm}", [("5", 1), ("5\\text{ cm}", 1), ("5 \\mbox{cm}", 1), ("6 \\text{ cm}", 0)]),
    "percent": ("25\\%", [("25\\%", 1), ("25", 1), ("26\\%", 0)]),
    "dollars": ("\\$18.90", [("18.90", 1), ("\\$18.9", 1), ("18.09", 0)]),
    "text": ("\\text{Monday}", [("\\text{Monday}", 1), ("Monday", 1), ("\\text{Tuesday}", 0)]),
    "choice": ("\\text{(C)}", [("C", 1), ("(C)", 1), ("\\text{(B)}", 0)]),
    "equation_value": ("5", [("x=5", 1), ("x = 6", 0)]),
    "equation": ("y = 2x+3", [("y=2x+3", 1), ("y = 3 + 2x", 1), ("y=2x-3", 0)]),
    "spacing": ("\\frac{1}{2}", [("\\frac{1}{2} ", 1), (" \\frac { 1 } { 2 } ", 1), ("\\,\\frac12\\,", 1)]),
    "thousands": ("10000", [("10,\\!000", 1), ("10\\!000", 1), ("10{,}000", 1), ("10,000", 1), ("1,000", 0)]),
    "comma_number": ("1234", [("1,234", 1), ("1234", 1), ("12,34", 0)]),
    "polynomial": ("x^2+2x+1", [("(x+1)^2", 1), ("x^2+2x+1", 1), ("x^2+2x-1", 0)]),
    "big_integer": ("2^{10}", [("1024", 1), ("2^{10}", 1), ("1000", 0)]),
}

WRAPPERS = {
    "box": "We simplify step by step and obtain the result.\nTherefore the answer is $\\boxed{{{a}}}$.",
    "final": "Working through it, we get the value.\nThe final answer is ${a}$.",
    "think_box": "<think>\nLet me try 17 first... no, 23. Recompute.\n</think>\nSo the result is \\boxed{{{a}}}.",
}


def _family_cases() -> list[Case]:
    out = []
    for tag, (gold, answers) in FAMILIES.items():
        for answer, label in answers:
            for wname, wrapper in WRAPPERS.items():
                if wname == "final" and tag in ("set", "tuple", "interval", "spacing"):
                    continue  # a list after "is $...$." is graded below with boxes only
                out.append(Case(f"{tag}/{wname}", wrapper.format(a=answer), gold, float(label)))
    return out


HAND: list[Case] = [
    # GSM8K-style plain answers
    Case("gsm8k", "Natalia sold 48/2 = 24 clips in May.\nAltogether she sold 48+24 = 72 clips.\n#### 72", "72", 1),
    Case("gsm8k", "She sold 48 + 24 = 72 clips.\n#### 71", "72", 0),
    Case("gsm8k", "The answer is 42.", "42", 1),
    Case("gsm8k", "The answer is 42 dollars.", "42", 1),
    Case("gsm8k", "The answer is $42.", "42", 1),
    Case("gsm8k", "So she earns 42 dollars in total.", "42", 1),
    Case("gsm8k", "42", "42", 1),
    Case("gsm8k", "The answer is 41.", "42", 0),
    Case("gsm8k", "#### 1,234", "1234", 1),
    Case("gsm8k", "Janet sells 16 - 3 - 4 = 9 eggs and makes 9 * 2 = $18 every day.", "18", 1),
    Case("gsm8k", "She makes 9 * 2 = 18 dollars.\nAnswer: 18", "18", 1),
    Case("gsm8k", "Answer: 17", "18", 0),
    Case("gsm8k", "**Answer:** 18", "18", 1),
    Case("gsm8k", "The final answer is: 18", "18", 1),
    Case("gsm8k", "Total cost: 3 * 4 = 12, plus 6 is 18.", "18", 1),
    Case("gsm8k", "He needs 2.5 hours.", "2.5", 1),
    Case("gsm8k", "He needs 2.5 hours.", "2", 0),
    Case("gsm8k", "The answer is 18.5", "18", 0),
    Case("gsm8k", "In total, 1,500 people came.", "1500", 1),
    Case("gsm8k", "The answer is: 3/4 of the cake", "0.75", 1),
    Case("gsm8k", "So the temperature dropped to -4 degrees.", "-4", 1),
    Case("gsm8k", "So the temperature dropped by 4 degrees.", "-4", 0),
    Case("gsm8k", "The answer is 60%.", "60", 1),
    Case("gsm8k", "#### 72\n", "72", 1),
    Case("gsm8k", "Each box holds 12 eggs, so 5 boxes hold 60 eggs.\nThe answer is 60", "60", 1),
    # several boxes: the last one wins
    Case("boxes", "First guess \\boxed{3}. No wait, recomputing: \\boxed{4}", "4", 1),
    Case("boxes", "First guess \\boxed{3}. No wait, recomputing: \\boxed{4}", "3", 0),
    Case("boxes", "\\boxed{\\frac{1}{2}} and then \\boxed{x^{2}}", "x^2", 1),
    Case("boxes", "\\boxed{1}\\boxed{2}\\boxed{3}", "3", 1),
    Case("boxes", "\\boxed{1}\\boxed{2}\\boxed{3}", "1", 0),
    Case("boxes", "The answer is 6. On reflection it is \\boxed{7}.", "7", 1),
    Case("boxes", "\\boxed{7}\nHmm, wait, that is wrong. The answer is 6.", "6", 1),
    Case("boxes", "\\boxed{5} unclosed \\boxed{6", "5", 1),
    Case("boxes", "\\fbox{12}", "12", 1),
    Case("boxes", "\\boxed {12}", "12", 1),
    Case("boxes", "\\boxed{\\left\\{1, 2\\right\\}}", "\\{1,2\\}", 1),
    Case("boxes", "$\\boxed{\\text{no solution}}$", "\\text{no solution}", 1),
    # answers followed by checks (a check word that opens the work is not a check of a stated result)
    Case("check", "We need 4 - 1 - 7. Let's check step by step: 4 - 1 = 3, 3 - 7 = -4.", "-4", 1),
    Case("check", "To verify, compute 4 - 1 = 3 and then 3 - 7 = -4.", "-4", 1),
    Case("check", "The total is 36. Let's verify: 6 * 6 = 36, and 36 - 1 = 35.", "36", 1),
    Case("check", "6 times 6 = 36. Check: 6*6=36", "36", 1),
    Case("check", "So x = 6. Check: 6*6 = 36, which matches.", "6", 1),
    Case("check", "So x = 6. Let's verify: 6 + 6 = 12, correct.", "6", 1),
    Case("check", "The answer is \\boxed{6}. Check: 6 \\cdot 6 = 36.", "6", 1),
    Case("check", "x = 5. Verification: 2(5) + 3 = 13 ✓", "5", 1),
    Case("check", "x = 4. Check: 2(4) + 3 = 11", "5", 0),
    # plain final answer followed by a parenthesis holding other numbers
    Case("paren", "The total is 15 (3 apples and 12 oranges).", "15", 1),
    Case("paren", "The answer is 42 (since 6 x 7 = 42).", "42", 1),
    Case("paren", "So she has 20 marbles (after giving away 5 of her 25).", "20", 1),
    Case("paren", "So she has 20 marbles (after giving away 5 of her 25).", "25", 0),
    Case("paren", "The area is 12 square units (4 by 3).", "12", 1),
    Case("paren", "The midpoint is (3, 4).", "(3,4)", 1),
    Case("paren", "The answer is 7 (rounded from 6.8).", "7", 1),
    # unboxed fractions
    Case("unboxed_frac", "So the probability is \\frac{3}{4}", "\\frac{3}{4}", 1),
    Case("unboxed_frac", "So the probability is \\frac{3}{4}", "4", 0),
    Case("unboxed_frac", "Hence the ratio equals \\frac{1}{2}.", "0.5", 1),
    Case("unboxed_frac", "Hence the ratio equals \\dfrac{5}{8}.", "0.625", 1),
    Case("unboxed_frac", "which gives 3/7", "\\frac{3}{7}", 1),
    Case("unboxed_frac", "which gives 2\\frac{1}{3} cups", "\\frac{7}{3}", 1),
    Case("unboxed_frac", "It is $\\frac{-2}{3}$", "-\\frac{2}{3}", 1),
    Case("unboxed_frac", "It is $-\\frac{2}{3}$", "-\\frac{2}{3}", 1),
    Case("unboxed_frac", "It is $\\frac{2}{3}$", "-\\frac{2}{3}", 0),
    # gold 0.5 and 1/2 both ways
    Case("half", "\\boxed{\\frac{1}{2}}", "0.5", 1),
    Case("half", "\\boxed{0.5}", "\\frac{1}{2}", 1),
    Case("half", "the answer is \\frac{1}{2}", "0.5", 1),
    Case("half", "the answer is 0.5", "\\frac{1}{2}", 1),
    # thinking traces
    Case("think", "<think>\n2+2 is 4\n</think>\n\\boxed{4}", "4", 1),
    Case("think", "<think>\nmaybe \\boxed{5}\n</think>\nThe answer is 6.", "5", 0),
    Case("think", "<think>\nmaybe \\boxed{5}\n</think>\nThe answer is 6.", "6", 1),
    Case("think", "<think>\nthe sum is 12\n</think>", "12", 0),
    Case("think", "<think>a</think><think>b</think> The answer is 3", "3", 1),
    Case("think", "Okay.</think>\nSo \\boxed{9}", "9", 1),
    Case("think", "<think>\n6*6 = 36\n</think>\n\nThe area is 36.", "36", 1),
    Case("think", "<think>\nLet me see, 7*8 = 56.\n</think>\n**Final Answer**\n\\boxed{56}", "56", 1),
    # truncated traces: an unclosed <think> earns nothing
    Case("truncated", "<think>\nLet me compute 6*6 = 36, hmm, so 36, so maybe", "36", 0),
    Case("truncated", "<think>\nThe answer is \\boxed{36}. But wait", "36", 0),
    Case("truncated", "<think>\nOkay so first 59 + 63 = 122", "122", 0),
    Case("truncated", "<think>\n", "1", 0),
    Case("truncated", "<think>\nx</think>\n<think>\nanother round: 36", "36", 0),
    # unworked answers: against a gold that is a plain number, an expression of the value earns nothing
    Case("unworked", "The answer is 4 − 1 − 7", "-4", 0, prompt=CHAIN),
    Case("unworked", "\\boxed{4 - 7 - 1}", "-4", 0, prompt=CHAIN),
    Case("unworked", "The answer is (4 - 1 - 7)", "-4", 0, prompt=CHAIN),
    Case("unworked", "\\boxed{[4-1-7]}", "-4", 0, prompt=CHAIN),
    Case("unworked", "4 - 1 - 7 = -4", "-4", 1, prompt=CHAIN),
    Case("unworked", "\\boxed{4 - 1 - 7 = -4}", "-4", 1, prompt=CHAIN),
    Case("unworked", "The answer is −4.", "-4", 1, prompt=CHAIN),
    Case("unworked", "\\boxed{6 \\times 8}", "48", 0, prompt="What is 6*8? Answer with just the final number."),
    Case("unworked", "The answer is 8×6", "48", 0, prompt="What is 6*8?"),
    Case("unworked", "\\boxed{48}", "48", 1, prompt="What is 6*8?"),
    Case("unworked", "\\boxed{3 \\times 12 + 5}", "41", 0),
    Case("unworked", "#### 3*12+5", "41", 0),
    Case("unworked", "\\boxed{\\dbinom{8}{4}}", "70", 0, prompt="Compute $\\dbinom{8}{4}$."),
    Case("unworked", "\\boxed{\\binom{8}{4}}", "70", 0),
    Case("unworked", "\\boxed{\\sqrt{49}}", "7", 0),
    Case("unworked", "\\boxed{\\log_2 64}", "6", 0),
    Case("unworked", "\\boxed{6!}", "720", 0),
    Case("unworked", "\\boxed{\\gcd(12, 18)}", "6", 0),
    Case("unworked", "\\boxed{\\left\\lceil\\sqrt{140}\\right\\rceil}", "12", 0),
    Case("unworked", "\\boxed{2^{10}}", "1024", 0),
    Case("unworked", "The answer is 4²", "4", 0),
    Case("unworked", "The answer is 4² = 16", "16", 1),
    Case("unworked", "\\boxed{\\frac{84}{144}}", "\\frac{7}{12}", 0, prompt="Simplify $\\frac{84}{144}$."),
    Case("unworked", "\\boxed{\\frac{126}{99}}", "\\frac{14}{11}", 0),
    Case("unworked", "\\boxed{\\frac{14}{11}}", "\\frac{14}{11}", 1),
    Case("unworked", "\\boxed{1.5 \\times 10^{3}}", "1500", 1),
    Case("unworked", "\\boxed{9.8 \\text{ m/s}^2}", "9.8", 1),
    Case("unworked", "\\boxed{12 \\text{ cm}^2}", "12", 1),
    Case("unworked", "\\boxed{12 m^2}", "12", 1),
    Case("unworked", "\\boxed{4 = 3}", "3", 0),
    Case("unworked", "\\boxed{x = 3 = 3.0}", "3", 1),
    Case("unworked", "\\boxed{-10^{-2}}", "-0.01", 1),
    Case("unworked", "\\boxed{x \\not= 3}", "3", 0),
    Case("unworked", "\\boxed{x \\neq 3}", "3", 0),
    Case("unworked", "\\boxed{\\neq 3}", "3", 0),
    Case("unworked", "The answer is ≠ 3", "3", 0),
    Case("unworked", "\\boxed{3 \\text{ (or 4)}}", "3", 0),
    Case("unworked", "\\boxed{3 \\approx 4}", "3", 0),
    Case("unworked", "\\boxed{3 \\lor 4}", "4", 0),
    Case("unworked", "\\boxed{3 | 4}", "4", 0),
    Case("unworked", "\\boxed{14 \\\\ 15}", "15", 0),
    Case("unworked", "\\boxed{|-4|}", "4", 0),
    # ... but work on the left of "=", approximations, congruences and spellings of one number are values
    Case("stated", "\\boxed{|z| = 5}", "5", 1),
    Case("stated", "\\boxed{P(X \\leq 2) = 0.5}", "0.5", 1),
    Case("stated", "\\boxed{\\lim_{x \\to 0} f(x) = 5}", "5", 1),
    Case("stated", "The area is $25\\pi \\approx 78.5$.", "78.5", 1),
    Case("stated", "\\boxed{n \\equiv 5 \\pmod{7}}", "5", 1),
    Case("stated", "\\boxed{27_{10}}", "27", 1),
    Case("stated", "The answer is 2 1/2 hours.", "2.5", 1),
    Case("stated", "\\boxed{-\\$4}", "-4", 1),
    Case("stated", "\\boxed{-{4}}", "-4", 1),
    Case("stated", "\\boxed{-{4}}", "4", 0),
    Case("stated", "The answer is –4.", "-4", 1),
    Case("stated", "\\boxed{\\cfrac{3}{4}}", "\\frac{3}{4}", 1),
    Case("stated", "\\boxed{{3 \\over 4}}", "0.75", 1),
    Case("stated", "\\boxed{12 \\textnormal{ cm}^2}", "12", 1),
    Case("stated", "\\boxed{12 \\text{m}\\,\\text{s}^{-1}}", "12", 1),
    Case("stated", "\\boxed{1 \\text{ or } 8}", "18", 0),
    Case("stated", "\\boxed{1 8}", "18", 0),
    Case("stated", "\\boxed{1, 800}", "1800", 0),
    Case("stated", "\\boxed{1\\,800}", "1800", 1),
    Case("stated", "\\boxed{3 \\approx 4}", "4", 0),
    Case("stated", "\\boxed{x \\le 5}", "5", 0),
    # a final-answer marker whose rest is not an answer is passed over
    Case("marker_noise", "So \\boxed{3}. I hope the answer is correct.", "3", 1),
    Case("marker_noise", "\\boxed{3}\nThe answer is consistent with the constraints.", "3", 1),
    Case("marker_noise", "Final answer: 3\nThe answer is therefore an odd number.", "3", 1),
    Case("marker_noise", "The answer is obvious.\n4 - 1 - 7 = -4", "-4", 1),
    Case("marker_noise", "To find the answer: 4 - 1 = 3, 3 - 7 = -4.", "-4", 1),
    Case("marker_noise", "The answer is:\n4 - 1 = 3\n3 - 7 = -4", "-4", 1),
    Case("marker_noise", "The answer is:\n\n42", "42", 1),
    Case("marker_noise", "The answer is A.", "A", 1),
    Case("marker_noise", "I am not sure the answer is right, but it is 7.", "7", 1),
    # restated questions: the prompt's own expression earns nothing
    Case("restated", "\\boxed{59 + 63}", "122", 0, prompt="What is 59 + 63?"),
    Case("restated", "59 + 63", "122", 0, prompt="What is 59 + 63?"),
    Case("restated", "\\boxed{59+63}", "122", 0, prompt="What is 59 + 63? Answer with just the final number."),
    Case("restated", "59 + 63 = \\boxed{122}", "122", 1, prompt="What is 59 + 63?"),
    Case("restated", "\\boxed{59 + 63 = 122}", "122", 1, prompt="What is 59 + 63?"),
    Case("restated", "\\boxed{(x+1)^2}", "x^2+2x+1", 0, prompt="Expand $(x+1)^2$."),
    Case("restated", "\\boxed{x^2+2x+1}", "x^2+2x+1", 1, prompt="Expand $(x+1)^2$."),
    Case("restated", "\\boxed{\\sqrt{2}}", "\\sqrt{2}", 1, prompt="Which is larger, $\\sqrt{2}$ or $1.4$?"),
    Case("restated", "\\boxed{3}", "3", 1, prompt="What is $3 \\times 1$?"),
    Case("restated", "The answer is $3 \\times 1$.", "3", 0, prompt="What is $3 \\times 1$?"),
    Case("restated", "\\boxed{x+1}", "x+1", 1, prompt="Is the factor x+1 or x-1?"),
    Case("restated", "\\boxed{\\frac{12}{3} + 2}", "6", 0, prompt="Compute $\\frac{12}{3} + 2$."),
    Case("restated", "\\boxed{\\sqrt{245}}", "7\\sqrt{5}", 0, prompt="Simplify $\\sqrt{245}$."),
    Case(
        "restated",
        "\\boxed{\\frac{1}{\\sqrt{2}}}",
        "\\frac{\\sqrt{2}}{2}",
        0,
        prompt="Rationalize the denominator: $\\frac{1}{\\sqrt{2}}$.",
    ),  # fmt: skip
    Case("restated", "\\boxed{7\\sqrt{5}}", "7\\sqrt{5}", 1, prompt="Simplify $\\sqrt{245}$."),
    Case(
        "restated",
        "The answer is 1/2.",
        "\\frac{1}{2}",
        1,
        prompt="A coin lands heads with probability 1/2. What is the probability of tails?",
    ),  # fmt: skip
    # conversational completions
    Case("messages", [{"role": "assistant", "content": "It is \\boxed{122}"}], "122", 1),
    Case("messages", [{"role": "assistant", "content": [{"type": "text", "text": "It is \\boxed{7}"}]}], "7", 1),
    Case("messages", [{"role": "assistant", "content": "It is \\boxed{121}"}], "122", 0),
    # empty inputs and empty gold
    Case("empty", "", "5", 0),
    Case("empty", "\\boxed{}", "5", 0),
    Case("empty", "\\boxed{}", "", 0),
    Case("empty", "\\boxed{5}", "", 0),
    Case("empty", "   \n  ", "0", 0),
    Case("empty", "no answer here", "3", 0),
    Case("empty", "The answer is", "3", 0),
    Case("empty", "The answer is:\n\\boxed{3}", "3", 1),
    # huge inputs: linear-time extraction
    Case("huge", "a" * 1_000_000 + " \\boxed{5}", "5", 1),
    Case("huge", "The answer is 5. " + "blah " * 200_000, "5", 1),
    Case("huge", "123," * 25_000, "5", 0),
    Case("huge", "\\boxed{" * 20_000, "5", 0),
    Case("huge", "(" * 50_000 + "5", "5", 1),
    Case("huge", "1/" * 30_000 + " so the answer is 7", "7", 1),
    Case("huge", "<think>" * 10_000 + "</think> 5", "5", 1),
    Case("huge", "=" * 100_000 + " -5", "-5", 1),
    Case("huge", "\\frac{" * 20_000, "5", 0),
    # the documented too-large class: scores 0.0 within the bound, whatever the value
    Case("too_large", "\\boxed{10^{10^{10}}}", "5", 0),
    Case("too_large", "\\boxed{2^{2^{40}}}", "5", 0),
    Case("too_large", "\\boxed{10^{10^{10}}}", "10^{10^{10}}", 0),
    Case("too_large", "\\boxed{2**2**40}", "5", 0),
    Case("too_large", "\\boxed{" + "9" * 5000 + "}", "9", 0),
    Case("too_large", "The answer is " + "9" * 5000, "9", 0),
    Case("too_large", "\\boxed{(1+" * 60 + "1" + ")}" * 60, "61", 0),
    Case("too_large", "\\boxed{100000!}", "5", 0),
    Case("too_large", "\\boxed{" + "x+" * 600 + "1}", "1", 0),
    Case("too_large", "\\boxed{2^{300000}}", "5", 0),
    # final-answer sentences in the forms models write them
    Case("final_forms", "Final Answer: The final answer is $5$. I hope it is correct.", "5", 1),
    Case("final_forms", "answer: x = 5", "5", 1),
    Case("final_forms", "So, $\\boxed{A}$", "A", 1),
    Case("final_forms", "The answer is 1,000,000.", "1000000", 1),
    Case("final_forms", "The answer is 3.14", "\\pi", 0),
    Case("final_forms", "**42**", "42", 1),
    Case("final_forms", "The answer is $\\$42$.", "42", 1),
    Case("final_forms", "The answer is 10^5", "100000", 1),
    Case("final_forms", "The answer is 0.25", "25\\%", 1),
    Case("final_forms", "The answer is \\(\\frac{1}{2}\\).", "\\frac12", 1),
    Case("final_forms", "The answer is \\[ \\frac{1}{2} \\]", "\\frac12", 1),
    Case("final_forms", "Thus, the answer is: $$\\frac{7}{2}$$", "3.5", 1),
    Case("final_forms", "The answer is $x^2 - 1$, which factors as $(x-1)(x+1)$.", "x^2-1", 1),
    Case("final_forms", "So the answer is -5.", "-5", 1),
    Case("final_forms", "The answer is 12 inches, i.e. 1 foot.", "12", 1),
    Case("final_forms", "The answer is 7.\n\nNote: 8 is wrong.", "7", 1),
    Case("final_forms", "I think the answer is 7, not 8.", "7", 1),
    Case("final_forms", "I think the answer is 8, not 7.", "7", 0),
    Case("final_forms", "Answer: (B)", "\\text{(B)}", 1),
    Case("final_forms", "The answer is B.", "\\text{(B)}", 1),
    Case("final_forms", "The answer is \\$18.90.", "18.90", 1),
    Case("final_forms", "The answer is 1, 2, 3.", "3, 2, 1", 1),
    # the classes found on the external corpus: a number joined to letters, prose answers, decimal commas, end tokens,
    # quotes, non-English markers, several boxes for a gold with several parts
    Case("joined", "So $\\boxed{x - 4}$.", "4", 0),
    Case("joined", "\\boxed{4x^2}", "4", 0),
    Case("joined", "\\boxed{\\frac{x}{4}}", "4", 0),
    Case("joined", "\\boxed{3\\pi}", "3", 0),
    Case("joined", "The answer is $3 + i$.", "3", 0),
    Case("joined", "AZYUK2A", "2", 0),
    Case("joined", "\\boxed{5 \\text{ cm}}", "5", 1),
    Case("joined", "The answer is $5\\%$.", "5", 1),
    Case("prose", "Therefore $x \\geq 5$ is the solution.", "x \\ge 5", 1),
    Case("prose", "Therefore $x \\geq 5$ is the solution.", "5", 0),
    Case("prose", "x^2 + 2*x + 1", "(x+1)^2", 1),
    Case("decimal_comma", "\\boxed{1000,99}", "1000.99", 1),
    Case("decimal_comma", "\\boxed{0.111}", "0,111", 1),
    Case("decimal_comma", "\\boxed{111}", "0,111", 0),
    Case("decimal_comma", "\\boxed{10, 20}", "10,20", 1),  # a gold "10,20": 10.2 or a list of two numbers
    Case("decimal_comma", "\\boxed{20, 10}", "10,20", 1),
    Case("decimal_comma", "\\boxed{10.2}", "10,20", 1),
    Case("decimal_comma", "\\boxed{10, 21}", "10,20", 0),
    Case("decimal_comma", "\\boxed{10.3}", "10,20", 0),
    Case("bare_choice", "C. x = 42", "C", 1),  # a one-line answer that opens with the choice letter
    Case("bare_choice", "(B) 12", "B", 1),
    Case("bare_choice", "A. x = 42", "C", 0),
    Case("bare_choice", "Cats like boxes.", "C", 0),
    Case("bare_choice", "C. 5", "5", 0),
    Case("end_token", "So the point is $(7, 6)$. <|im_end|>", "(7, 6)", 1),
    Case("quotes", 'The final answer is \\"(1, 2)\\".', "(1, 2)", 1),
    Case("foreign", "Donc 3 + 4 = 7.\nRéponse : 7", "7", 1),
    Case("foreign", "所以 3 + 4 = 7。答案：7", "7", 1),
    Case("several_boxes", "The pairs are \\boxed{(1, 2)}, \\boxed{(2, 1)}.", "(1, 2), (2, 1)", 1),
    Case("several_boxes", "The pairs are \\boxed{(1, 2)}, \\boxed{(2, 1)}.", "(2, 1)", 1),
    Case("several_boxes", "Roots: \\boxed{1} and \\boxed{-2}", "1, -2", 1),
    Case("several_boxes", "Roots: \\boxed{1} and \\boxed{3}", "1, -2", 0),
    # known limits (docs/rewards.md): several answers in prose, number words, times of day
    Case("known_limit", "The answer is 5 and 6", "5, 6", 1),
    Case("known_limit", "So x = -3 or x = 2.", "-3, 2", 1),
    Case("known_limit", "so the answer is negative five", "-5", 1),
    Case("known_limit", "The answer is 2:30 PM", "2:30", 1),
    # answer_format: boxed (strict) and final
    Case("fmt_boxed", "The answer is 5.", "5", 0, answer_format="boxed"),
    Case("fmt_boxed", "So \\boxed{5}.", "5", 1, answer_format="boxed"),
    Case("fmt_boxed", "\\boxed{5}. Hmm, actually the answer is 6.", "5", 1, answer_format="boxed"),
    Case("fmt_boxed", "<think>\\boxed{5}", "5", 0, answer_format="boxed"),
    Case("fmt_boxed", "59 + 63 = 122", "122", 0, answer_format="boxed"),
    Case("fmt_boxed", "\\boxed{59 + 63}", "122", 0, answer_format="boxed", prompt="What is 59 + 63?"),
    Case("fmt_final", "#### 42", "42", 1, answer_format="final"),
    Case("fmt_final", "\\boxed{6}, and 7 more is 13", "6", 0, answer_format="final"),
    Case("fmt_final", "The answer is 6. Then I drew \\boxed{7}", "6", 1, answer_format="final"),
    Case("fmt_final", "so 3 + 4 = 7", "7", 1, answer_format="final"),
    Case("fmt_final", "\\boxed{\\frac{1}{2}}", "0.5", 1, answer_format="final"),
]


def cases() -> list[Case]:
    """All cases: the families in every wrapper, then the hand-written ones."""
    return _family_cases() + HAND
