"""Grading: what a completion answers (extraction) and whether it equals the gold answer (equivalence).

Pure functions of strings, no processes and no clocks; :mod:`apo.tasks.bounded` keeps them within a time limit and
:mod:`apo.tasks.rewards` turns them into TRL reward functions.

Extraction (``extract_answer(text, answer_format, gold=None)``), in order:

1. Thinking: the text after the last ``</think>`` is graded; a ``<think>`` that is never closed (a trace cut off by
   ``max_completion_length``) yields no answer at all, whatever number it happens to end on.
2. ``answer_format``:

   - ``"boxed"``: the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces matched; nothing else counts.
     The strict form the paper's binary rule-based reward implies.
   - ``"final"``: what follows the last final-answer marker (``####``, ``answer is``, ``answer:``, ``final answer``,
     and ``Réponse :``, ``答案：`` and the like) on its line, else the fallback below (GSM8K style).
   - ``"auto"``: whichever of the last box and the last marker comes later, else the fallback: what a careful
     human grader reads as the answer.

   The fallback: for a gold that is one choice letter, the letter that opens a one-line answer (``C. x = 42``); a
   final tuple; the whole text when it is a bare answer (``bare_answer``: ``x^2 + 2*x + 1``, ``\\text{odd}``); the
   last math span with no number after it (``last_math``), for a gold that is not a plain number or when the span is
   a relation (``Therefore $x \\geq 5$ is the solution.``); else the last number. A gold
   with several parts (``several_parts``) takes the run of boxes that ends the text (``boxed_run``) instead of the
   last box. Chat-template tokens at the end (``<|im_end|>``) are ignored.

   The last number (``last_number``) is an integer, a decimal, ``a/b``, ``\\frac{a}{b}`` (also ``\\dfrac``,
   ``\\tfrac``, ``\\frac12``) or a mixed number ``2\\frac{1}{2}``; thousands separators (``1,234``, ``1\\!234``,
   ``1{,}234``) are removed; a parenthesis right after the answer (``15 (3 + 12)``) and a check after it
   (``= 36. Check: 6*6=36``) are not read as the answer.

Equivalence (``math_equal``):

- an empty gold answer never gives credit; an answer that is ``too_large`` scores 0 without reaching sympy;
- in ``quick_equal``, a gold answer that is a plain number (``parse_number``; a decimal comma reads as a decimal:
  ``0,111``): the answer must state that number (``stated_value``, exact); an expression of it (``6 \\times 8``,
  ``\\dbinom{8}{4}``, ``\\frac{6}{8}``, ``3 \\pm 1``) or the number joined to letters or symbols (``x - 4``,
  ``4x^2``, ``3\\pi``, ``AZYUK2A``) is not a value (``unworked``) and scores 0;
- other gold answers, in ``quick_equal``: equal after removing LaTeX spacing (``\\,``, ``\\!``,
  ``\\left``/``\\right``, ``$``, ``\\dfrac`` -> ``\\frac``) -> equal;
- otherwise math-verify (``parse`` + ``verify``, its own timeouts off because they use ``signal.alarm``), falling
  back to string equality when either side does not parse. math-verify accepts ``x=5`` for ``5``, ``50\\%`` for
  ``50``, ``30^\\circ`` for ``30``, units and ``\\text{}``, set order, intervals, ``\\pi``.

A restated question earns nothing (``restates``): an answer that contains an operator or a function and appears
verbatim (spacing aside) in the prompt, unless it is the gold answer itself.

Every regular expression here runs in linear time: no nested quantifiers, no back-tracking over an unbounded run.
"""

from __future__ import annotations

import functools
import math
import re
from fractions import Fraction

ANSWER_FORMATS = ("boxed", "final", "auto")
"""Valid ``answer_format`` values; ``None`` means the reward's default."""

MAX_ANSWER_CHARS = 1000
"""An extracted answer (or gold answer) longer than this is too large to verify."""
MAX_DIGITS = 1000
"""A number with more digits than this is too large to verify (Python's int/str limit is 4,300)."""
MAX_EXPONENT = 100_000
"""A power whose exponent exceeds this (``10^{10^{10}}``, ``2^{200000}``) is too large to verify."""
MAX_NESTING = 50
"""Brackets nested deeper than this are too large to verify."""

# -- completion text --------------------------------------------------------------------------------------------------


def completion_text(completion) -> str:
    """The text of one completion: the string itself, or the concatenated ``content`` of the messages of a
    conversational completion (a list of ``{"role", "content"}`` dicts; only ``assistant`` messages if any)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        msgs = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in msgs if m.get("role") == "assistant"] or msgs
        return "".join(_content_text(m.get("content", "")) for m in assistant)
    raise TypeError(f"completion of type {type(completion).__name__}: expected a string or a list of messages")


def prompt_text(prompt) -> str:
    """The text of one prompt: the string itself, or the ``content`` of all its messages joined by newlines."""
    if prompt is None:
        return ""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, dict):
        prompt = [prompt]
    if isinstance(prompt, (list, tuple)):
        return "\n".join(_content_text(m.get("content", "")) for m in prompt if isinstance(m, dict))
    return str(prompt)


def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks: [{"type": "text", "text": ...}, ...]
        return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return "" if content is None else str(content)


def after_thinking(text: str) -> str | None:
    """The part of ``text`` a grader reads: after the last ``</think>``; the whole text when there is no thinking;
    None when a ``<think>`` is never closed (a truncated trace)."""
    close = text.rfind("</think>")
    if close >= 0:
        text = text[close + len("</think>") :]
    return None if "<think>" in text else text


# -- boxes ---------------------------------------------------------------------------------------------------------


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces matched, or None.

    One forward pass (linear in ``len(text)``): every box opening is pushed on a stack of open braces and the last box
    to close wins; an unclosed box is skipped."""
    span = _last_boxed_span(text)
    return None if span is None else text[span[0] : span[1]]


_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{|[{}]")


def _last_boxed_span(text: str) -> tuple[int, int] | None:
    """``(start, end)`` of the content of the box whose opening comes last among the closed boxes."""
    if "\\boxed" not in text and "\\fbox" not in text:
        return None
    stack: list[int] = []  # content start of a box, or -1 for a plain brace
    best = None
    for m in _BOX_RE.finditer(text):
        tok = m.group()
        if tok == "}":
            if stack:
                start = stack.pop()
                if start >= 0 and (best is None or start > best[0]):
                    best = (start, m.start())
        elif tok == "{":
            stack.append(-1)
        else:
            stack.append(m.end())
    return best


# -- numbers ----------------------------------------------------------------------------------------------------------

_FRAC = r"\\[dt]?frac\s*(?:\{\s*(-?\s*\d[\d,.]*)\s*\}\s*\{\s*(-?\s*\d[\d,.]*)\s*\}|(\d)\s*(\d))"
_NUMBER_SCAN_RE = re.compile(_FRAC + r"|\d[\d,.]*(?:/\d+)?")
_THOUSANDS_RE = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_PLAIN_RE = re.compile(r"\d+(?:\.\d+)?")
_SEPARATOR_RE = re.compile(r"\\!|\{,\}|(?<=\d)\\,(?=\d{3})")


_DECIMAL_COMMA_RE = re.compile(r"(\d+),(\d+)")


def _decimal_comma(tok: str) -> bool:
    """Whether ``tok`` (digits and one comma) is a number written with a decimal comma: ``0,111``, ``2,74``,
    ``1000,99`` (a zero or four and more digits before the comma, or exactly two after it); ``1,234`` (thousands) and
    ``1,2`` (two numbers) are not."""
    m = _DECIMAL_COMMA_RE.fullmatch(tok)
    if not m:
        return False
    before, after = m.groups()
    return before == "0" or (len(after) != 3 and (len(before) >= 4 or len(after) == 2))


def _split_token(tok: str) -> list[str]:
    """A run of digits, commas and dots as the numbers it holds: ``"1,234.5"`` -> ``["1234.5"]``, ``"1,2,3"`` ->
    ``["1", "2", "3"]``, ``"36."`` -> ``["36"]``."""
    tok = tok.rstrip(",.")
    if "," in tok:
        if _decimal_comma(tok):
            return [tok.replace(",", ".")]
        if _THOUSANDS_RE.fullmatch(tok):
            return [tok.replace(",", "")]
        return [x for part in tok.split(",") if part for x in _split_token(part)]
    if tok.count(".") > 1:
        return [p for p in tok.split(".") if p]
    return [tok] if tok else []


def _numbers(text: str) -> list[tuple[int, str]]:
    """``(position, number)`` for every number of ``text``, in order; numbers as strings (``"-12.5"``, ``"3/4"``,
    ``"\\frac{1}{2}"``, ``"2\\frac{1}{2}"``). A ``-`` counts as a sign unless it follows a digit, letter or ``)``."""
    return [(a, s) for a, _, s in _number_spans(text)]


def _number_spans(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, number)`` for every number of ``text`` (``_numbers``), the span including its sign."""
    out: list[tuple[int, int, str]] = []  # (start, end, number)
    for m in _NUMBER_SCAN_RE.finditer(text):
        start = m.start()
        sign = ""
        if start > 0 and text[start - 1] in "-−–":
            if start < 2 or not (text[start - 2].isalnum() or text[start - 2] in ")}"):
                sign = "-"
        if m.group().startswith("\\"):
            num, den = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
            frac = f"\\frac{{{num.replace(' ', '')}}}{{{den.replace(' ', '')}}}"
            if out and out[-1][1] >= start - 1 and text[out[-1][1] : start].strip() == "" and out[-1][2].isdigit():
                out[-1] = (out[-1][0], m.end(), out[-1][2] + frac)  # mixed number 2\\frac{1}{2}
            else:
                out.append((start - len(sign), m.end(), sign + frac))
            continue
        tok, frac = m.group(), ""
        if "/" in tok:
            tok, _, den = tok.partition("/")
            frac = "/" + den
        parts = _split_token(tok)
        for k, part in enumerate(parts):
            s = (sign if k == 0 else "") + part + (frac if k == len(parts) - 1 else "")
            out.append((start - (len(sign) if k == 0 else 0), m.end(), s))
    return out


def first_integer(text: str) -> int | None:
    """The first integer in ``text`` (``"1,234"`` counts as 1234), or None; None too when the first number is not an
    integer (``"122.9"``) or has more than ``MAX_DIGITS`` digits."""
    nums = _numbers(text)
    if not nums:
        return None
    s = nums[0][1]
    if not re.fullmatch(r"-?\d+", s) or len(s) > MAX_DIGITS:
        return None
    return int(s)


def first_number(text: str) -> str | None:
    """The first number of ``text`` as a string (see ``_numbers``), or None."""
    nums = _numbers(text)
    return nums[0][1] if nums else None


_CHECK_RE = re.compile(r"\b(?:check|checking|verify|verification|verifying|sanity check)\b\s*[:,.]?", re.IGNORECASE)
_SENTENCE_SPLIT_RE = re.compile(r"[.!?;](?=\s|$)|\n")
_STATED_RESULT_RE = re.compile(r"(?:=|\bis\b|\bare\b|:|\\boxed\{)[^=]*\d")


def _last_sentence(text: str) -> str:
    """The last sentence of ``text`` (split at ``. ! ? ;`` before a space, and at line breaks), passing over a final
    fragment without digits: the lead-in of the sentence that holds a check word (``So x = 6. Let's ``)."""
    parts = [p for p in _SENTENCE_SPLIT_RE.split(text) if p.strip()]
    if parts and not any(c.isdigit() for c in parts[-1]):
        parts.pop()  # the lead-in of the sentence that holds the check word
    return parts[-1] if parts else ""


def last_number(text: str) -> str | None:
    """The last number of ``text`` (an integer, decimal, ``a/b``, ``\\frac{a}{b}`` or mixed number; thousands
    separators removed), or None. Numbers in a check after the answer (``= 36. Check: 6*6=36``) and in a parenthesis
    right after a number (``15 (3 apples and 12 oranges)``) are skipped: a check only when the sentence before it
    states a result (``= 36``, ``is 36``, ``: 36``), not when the check word opens the work (``We need 4 - 1 - 7.
    Let's check step by step: 4 - 1 = 3, 3 - 7 = -4``)."""
    text = _SEPARATOR_RE.sub("", text)
    checks = list(_CHECK_RE.finditer(text))
    if checks and _STATED_RESULT_RE.search(
        _last_sentence(text[max(0, checks[-1].start() - 500) : checks[-1].start()])
    ):
        text = text[: checks[-1].start()]
    text = _drop_trailing_parenthesis(text)
    nums = _numbers(text)
    return nums[-1][1] if nums else None


_UNITS_AFTER_NUMBER_RE = re.compile(r"\d\}?\s*(?:%|\\%)?(?:\s*[A-Za-z$\\%]+){0,3}\s*$")


def _drop_trailing_parenthesis(text: str) -> str:
    """``text`` without a final parenthesis that follows a number and at most three words
    (``"15 apples (3 + 12)."`` -> ``"15 apples "``); unchanged otherwise (``"the point (3, 4)"``)."""
    stripped = text.rstrip().rstrip(".!")
    if not stripped.endswith(")"):
        return text
    depth, i = 0, len(stripped) - 1
    while i >= 0:
        if stripped[i] == ")":
            depth += 1
        elif stripped[i] == "(":
            depth -= 1
            if depth == 0:
                break
        i -= 1
    head = stripped[: max(i, 0)]
    if i > 0 and _UNITS_AFTER_NUMBER_RE.search(head[-80:]):
        return head
    return text


_GROUP_RE = re.compile(r"[(\[]\s*-?[\w\\.]+(?:\s*,\s*-?[\w\\.]+)+\s*[)\]]$")


def trailing_group(text: str) -> str | None:
    """A tuple or interval of numbers that ends the text (``"The midpoint is (3, 4)."`` -> ``"(3, 4)"``), unless it
    follows a number (then it is a remark on that number: ``"15 (3 + 12)"``), else None."""
    stripped = text.rstrip().rstrip(".!").rstrip("$").rstrip()
    if not stripped.endswith((")", "]")):
        return None
    tail = stripped[-200:]
    start = max(tail.rfind("("), tail.rfind("["))
    if start < 0:
        return None
    group = tail[start:]
    if not _GROUP_RE.fullmatch(group) or _drop_trailing_parenthesis(stripped) != stripped:
        return None
    return group


# -- final-answer markers ---------------------------------------------------------------------------------------------

_ENGLISH_MARKER_RE = re.compile(r"####|\b(?:final\s+answer|answer)\b\**\s*(?:is\b\s*:?|:|=)", re.IGNORECASE)
_FOREIGN_MARKER_WORDS = ("réponse", "reponse", "respuesta", "resposta", "antwort", "risposta", "ответ", "答案")
_MARKER_RE = re.compile(
    _ENGLISH_MARKER_RE.pattern
    + r"|\b(?:réponse(?:\s+finale)?|reponse|respuesta(?:\s+final)?|resposta|antwort|risposta|ответ)\b\**\s*"
    r"(?:(?:est|es|é|ist|è)\b\s*:?|:|=)"
    r"|(?:最终)?答案\s*(?:是|为|為)\s*[:：]?|(?:最终)?答案\s*[:：]",
    re.IGNORECASE,
)
"""A final-answer marker: ``####``, ``answer is``, ``answer:``, ``final answer``, and the same in French, Spanish,
Portuguese, German, Italian, Russian and Chinese (``Réponse :``, ``la respuesta es``, ``Antwort:``, ``答案：``)."""
_SENTENCE_END_RE = re.compile(r"\.(?=\s|$)")
_WRAPPERS_RE = re.compile(r"\*\*|\\\(|\\\)|\\\[|\\\]|\\\$|\$|\\?\"")
_LEADING_NUMBER_RE = re.compile(r"(-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?)(?:,?\s+[A-Za-z].*|\s*\(.*)$")
_LEADING_CHOICE_RE = re.compile(r"\(?([A-H])\)?(?:[.,;:)]\s|[.,;:)]?$)")
"""A choice letter that opens a marker's answer before words: ``D, it can't be A or B`` -> ``D``."""
_LEADING_MATH_RE = re.compile(r"[\s:*]*(?:\$\$([^$]+)\$\$|\$([^$]+)\$|\\\((.+?)\\\)|\\\[(.+?)\\\])")


def _last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    last = None
    for last in pattern.finditer(text):  # noqa: B007 - the loop keeps the last match
        pass
    return last


_NOT_AN_ANSWER_RE = re.compile(
    r"(?:correct|incorrect|right|wrong|consistent|obvious|clear|clearly|therefore|thus|hence|so|as|below|above|"
    r"following|given|not|in|simple|straightforward|easy|indeed|this|that|it|an?|the|to|probably|likely|"
    r"reasonable|valid|confirmed|verified|checked)\b"
)
"""Lower-case words that open the rest of a sentence after "answer is" that is not the answer ("I hope the answer is
correct", "The answer is therefore an odd number", "the answer is not 3, it is 4"); matched case-sensitively, so
``The answer is A`` is an answer."""


_MARKER_WINDOW = 2000
"""Characters after a final-answer marker that are read for its answer (its line, or the next non-empty lines)."""
_MARKERS_TRIED = 4
"""Final-answer markers tried, from the last one back, before giving up on markers (bounds the work per text)."""


def _last_marker(text: str) -> tuple[int, str] | None:
    r"""``(position, answer)`` of the last final-answer marker of ``text`` whose rest is an answer, or None.

    The answer is on the marker's line; on an empty line, the next non-empty line, unless that is a step of work (an
    equation followed by more lines: ``The answer is:\n4 - 1 = 3\n3 - 7 = -4``), which gives an empty answer. A
    marker whose rest opens with a word of ``_NOT_AN_ANSWER_RE`` (``... the answer is right, but it is 7``) is passed
    over for the one before it (at most ``_MARKERS_TRIED`` markers), then for the box or the last number."""
    lower = text.lower()
    foreign = any(w in lower for w in _FOREIGN_MARKER_WORDS)  # the full pattern scans slower: only when needed
    markers = list((_MARKER_RE if foreign else _ENGLISH_MARKER_RE).finditer(text))
    for m in reversed(markers[-_MARKERS_TRIED:]):
        lines = [x.strip() for x in text[m.end() : m.end() + _MARKER_WINDOW].split("\n")]
        line = lines[0]
        if not line:
            rest = [x for x in lines[1:] if x]
            line = rest[0] if rest and not ("=" in rest[0] and len(rest) > 1) else ""
        answer = marker_answer(line)
        if _NOT_AN_ANSWER_RE.match(answer):
            continue
        return m.start(), answer
    return None


def marker_answer(line: str) -> str:
    """The answer in the rest of a final-answer line: the box in its first sentence if any, else that sentence
    without ``$``, ``**`` and ``\\(...\\)``, shortened (outside a leading math span) to its leading number when words
    or a parenthesis follow it (``42 apples`` -> 42) or to its leading choice letter (``D, not A`` -> D), or to the
    value after the last ``=`` of a chain of steps (``4 - 1 = 3, 3 - 7 = -4`` -> -4)."""
    line = line.replace("\\$", "")  # a currency sign, not a math delimiter
    math = _LEADING_MATH_RE.match(line)
    if math:  # "$x^2 - 1$, which factors": the answer is the math span
        line = next(g for g in math.groups() if g is not None)
    end = _SENTENCE_END_RE.search(line)
    if end:
        line = line[: end.start()]
    boxed = last_boxed(line)
    if boxed is not None:
        return boxed.strip()
    line = _WRAPPERS_RE.sub("", line).strip().strip(":").strip()
    m = None if math else _LEADING_NUMBER_RE.fullmatch(line) or _LEADING_CHOICE_RE.match(line)
    if m:  # prose after the answer; a math span is the answer whole ($4 i$, $4(x+1)$)
        return m.group(1)
    if line.count("=") > 1:  # a chain of steps, "4 - 1 = 3, 3 - 7 = -4": its last value
        line = line.rpartition("=")[2]
    return line.rstrip(".!").strip()


# -- extraction -------------------------------------------------------------------------------------------------------


def extract_answer(text: str, answer_format: str = "auto", gold: str | None = None) -> str | None:
    """The answer of a completion under ``answer_format`` (module docstring), or None when it has none.

    ``gold``, when given, shapes three rules: for a gold with several parts (``several_parts``) the answer in a box is
    the run of boxes that ends the text (``boxed_run``); the last math span (``last_math``) comes before the last
    number for a gold that is not a plain number, and for a plain-number gold when the span is a relation
    (``x \\geq 5``); for a gold that is one choice letter, a one-line answer that opens with a letter is that letter.

    Raises:
        ValueError: an unknown ``answer_format``.
    """
    check_answer_format(answer_format)
    text = after_thinking(text)
    if text is None:
        return None
    text = _strip_end_tokens(text)
    several = gold is not None and several_parts(gold)
    if answer_format == "boxed":
        return (several and boxed_run(text)) or last_boxed(text)
    marker = _last_marker(text)
    if answer_format == "auto":
        span = _last_boxed_span(text)
        if span is not None and (marker is None or span[0] > marker[0]):
            return (several and boxed_run(text)) or text[span[0] : span[1]]
    if marker is not None and marker[1]:
        return marker[1]
    if gold is not None and _CHOICE_GOLD_RE.fullmatch(gold.strip()):
        choice = _bare_choice(text)  # "C. x = 42" for the gold C
        if choice is not None:
            return choice
    found = trailing_group(text) or bare_answer(text)
    if found is None and gold is not None:
        span = last_math(text)  # for a numeric gold, only a relation: Therefore $x \geq 5$ is not 5
        if span is not None and (parse_number(gold) is None or unworked(span) == _RELATION):
            found = span
    return found or last_number(text)


_CHOICE_GOLD_RE = re.compile(r"\(?[A-H]\)?")
"""A multiple-choice gold: one letter A-H, bare or in parentheses."""


def _bare_choice(text: str) -> str | None:
    """The choice letter that opens a one-line completion of at most ``BARE_ANSWER_CHARS`` characters and is followed
    by a period, comma, colon, semicolon or parenthesis (``C. x = 42`` -> ``C``; ``(B) 12`` -> ``B``), else None."""
    t = _WRAPPERS_RE.sub("", text).strip()
    if not t or len(t) > BARE_ANSWER_CHARS or "\n" in t:
        return None
    m = _LEADING_CHOICE_RE.match(t)
    return m.group(1) if m else None


_END_TOKEN_RE = re.compile(r"(?:<\|[A-Za-z_]{1,30}\|>|</s>|<eos>|<end_of_turn>)$")
"""A chat-template token at the end of a completion (``<|im_end|>``, ``<|endoftext|>``, ``<|eot_id|>``, ``</s>``)."""


def _strip_end_tokens(text: str) -> str:
    """``text`` without the chat-template tokens (``_END_TOKEN_RE``, at most 8) and spaces that end it."""
    for _ in range(8):
        stripped = text.rstrip()
        m = _END_TOKEN_RE.search(stripped[-40:])
        if m is None:
            return text
        text = stripped[: len(stripped) - len(m.group())]
    return text


_MACRO_OR_TEXT_RE = re.compile(r"\\(?:text\w*|mbox|math\w*|begin|end)\s*\{[^{}]*\}|\\[A-Za-z]+")
_WORD_RE = re.compile(r"[A-Za-z]{2,}")
BARE_ANSWER_CHARS = 200
"""A completion of at most this many characters, on one line and with no word, is an answer as a whole."""


def bare_answer(text: str) -> str | None:
    """``text`` itself (without ``$``, ``**``, quotes, spaces and a final period) when it is a bare answer, not prose:
    one line of at most ``BARE_ANSWER_CHARS`` ASCII characters, no box, with no word of two letters or more outside
    LaTeX commands and
    ``\\text{}`` (``x^2 + 2*x + 1``, ``\\text{odd}``, ``(r+5)^2``, ``x - 4``), or a single token (``odd``,
    ``AZYUK2A``); the plain number after the last ``=`` of arithmetic (``59 + 63 = 122`` -> ``122``); else None."""
    t = _WRAPPERS_RE.sub("", text).strip().rstrip(".").strip()
    if not t or len(t) > BARE_ANSWER_CHARS or "\n" in t or not t.isascii() or "\\boxed" in t or "\\fbox" in t:
        return None
    if " " not in t or not _WORD_RE.search(_MACRO_OR_TEXT_RE.sub(" ", t)):
        work, _, value = t.rpartition("=")
        arithmetic = work and not any(_is_letter(c) or c in "<>!" for c in work)
        return value.strip() if arithmetic and parse_number(value) is not None else t  # 59 + 63 = 122 -> 122
    return None


_MATH_CLOSERS = (("$$", "$$"), ("\\]", "\\["), ("\\)", "\\("), ("$", "$"))


def last_math(text: str) -> str | None:
    """The content of the last math span of ``text`` (``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``) when no
    digit follows it (``Therefore $x \\geq 5$ is the solution.`` -> ``x \\geq 5``), else None. Used for gold answers
    that are not plain numbers; a number after the span is the answer of the last-number rule. Linear."""
    best = None
    for close, opening in _MATH_CLOSERS:
        end = text.rfind(close)
        if end < 0:
            continue
        start = text.rfind(opening, 0, end)
        if start < 0 or (best is not None and end < best[2]):  # inside a later span ($ of a closing $$)
            continue
        best = (start + len(opening), end, end + len(close))
    if best is None or any(c.isdigit() for c in text[best[2] :]):
        return None
    content = text[best[0] : best[1]].strip()
    return content if content and len(content) <= MAX_ANSWER_CHARS else None


def several_parts(gold: str) -> bool:
    """Whether ``gold`` has several parts: a comma outside brackets, once a pair of braces around the whole is
    removed (``1, -2``, ``(1, 2), (2, 1)``, ``\\{1,2,3\\}``, ``k = 45, n = 2``), and it is not a plain number
    (``1,234``)."""
    g = normalize(gold).replace("\\{", "{").replace("\\}", "}")
    if parse_number(g) is not None:
        return False
    if g.startswith("{") and g.endswith("}"):
        g = g[1:-1]
    depth = 0
    for c in g:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            return True
    return False


_RUN_GAP_CHARS = 80
"""Characters (no digit, no blank line) that may separate two boxes of one answer (``, ``, ``\\quad \\text{and}``)."""
_RUN_GAP_WORDS = 4
"""Words that may separate two boxes of one answer (``and``, ``papers and``, ``for part (a) and``)."""


def boxed_run(text: str) -> str | None:
    """The contents of the boxes that end ``text`` one after another, joined by ``", "``, when there are at least two
    (``\\boxed{(1, 2)}, \\boxed{(2, 1)}`` -> ``(1, 2), (2, 1)``): the last box and each box before it separated from
    the next by at most ``_RUN_GAP_CHARS`` characters and ``_RUN_GAP_WORDS`` words, with no digit and no blank line;
    else None. Linear."""
    spans = _box_spans(text)
    if len(spans) < 2:
        return None
    run = [spans[-1]]
    for span in reversed(spans[:-1]):
        gap = text[span[2] + 1 : run[-1][0]]
        words = len(_WORD_RE.findall(_MACRO_OR_TEXT_RE.sub(" ", gap))) + gap.count("\\text")
        if span[2] >= run[-1][0] or len(gap) > _RUN_GAP_CHARS or "\n\n" in gap or any(c.isdigit() for c in gap):
            break
        if words > _RUN_GAP_WORDS:
            break
        run.append(span)
    if len(run) < 2:
        return None
    return ", ".join(text[a:b].strip() for _, a, b in reversed(run))


def _box_spans(text: str) -> list[tuple[int, int, int]]:
    """``(macro start, content start, content end)`` of every closed box of ``text`` that is inside no other box, in
    order. One forward pass."""
    if "\\boxed" not in text and "\\fbox" not in text:
        return []
    stack: list[tuple[int, int]] = []  # (macro start, content start) of a box, or (-1, -1) for a plain brace
    open_boxes = 0
    out = []
    for m in _BOX_RE.finditer(text):
        tok = m.group()
        if tok == "}":
            if stack:
                macro, start = stack.pop()
                if start >= 0:
                    open_boxes -= 1
                    if open_boxes == 0:
                        out.append((macro, start, m.start()))
        elif tok == "{":
            stack.append((-1, -1))
        else:
            stack.append((m.start(), m.end()))
            open_boxes += 1
    return out


def check_answer_format(answer_format: str | None) -> None:
    """Raise a one-line ``ValueError`` naming ``answer_format`` unless it is None or one of ``ANSWER_FORMATS``."""
    if answer_format is not None and answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format={answer_format!r}: expected one of {list(ANSWER_FORMATS)} or None")


def gold_answer(solution: str | None = None, answer: str | None = None) -> str:
    """The reference answer: ``answer`` if given (text after ``####`` for GSM8K style), else the last
    ``\\boxed{}`` of a MATH-style ``solution``, or the run of boxes that ends it joined by ``", "`` (``boxed_run``:
    ``\\boxed{1} and \\boxed{-2}`` -> ``1, -2``), else the whole solution. May be empty: graders give it no credit."""
    if answer is not None:
        answer = str(answer)
        return answer.split("####")[-1].strip()
    if solution is None:
        raise ValueError("math_reward needs a 'solution' or an 'answer' column")
    boxed = boxed_run(solution) or last_boxed(solution)
    return (boxed if boxed is not None else solution).strip()


_FREE_ANSWER_RE = re.compile(r"answer\s*(?:is)?\s*[:=]?", re.IGNORECASE)


def extract_free_answer(text: str) -> str:
    """The answer of a free-form completion: the last ``\\boxed{}`` content, else what follows the last
    ``Answer:`` on its line, else the last non-empty line; stripped."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    m = _last_match(_FREE_ANSWER_RE, text)
    if m is not None:
        rest = text[m.end() :].split("\n", 1)[0].strip().rstrip(".")
        if rest:
            return rest
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# -- size guards ------------------------------------------------------------------------------------------------------

_DIGIT_RUN_RE = re.compile(r"\d+")
_POWER_RE = re.compile(r"\^|\*\*")
_FACTORIAL_RE = re.compile(r"(\d+)\s*!")


def too_large(expr: str) -> str | None:
    """Why ``expr`` is too large to hand to sympy, or None. Linear in ``len(expr)``.

    Too large: longer than ``MAX_ANSWER_CHARS``; a number of more than ``MAX_DIGITS`` digits; brackets nested deeper
    than ``MAX_NESTING``; a power whose exponent is, or evaluates to, more than ``MAX_EXPONENT`` (``2^{200000}``,
    ``10^{10^{10}}``, ``2**2**40``); a factorial of more than 10,000."""
    if len(expr) > MAX_ANSWER_CHARS:
        return f"longer than {MAX_ANSWER_CHARS} characters"
    if any(len(m.group()) > MAX_DIGITS for m in _DIGIT_RUN_RE.finditer(expr)):
        return f"a number of more than {MAX_DIGITS} digits"
    depth = deepest = 0
    for c in expr:
        if c in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "})]":
            depth -= 1
    if deepest > MAX_NESTING:
        return f"brackets nested more than {MAX_NESTING} deep"
    for m in _FACTORIAL_RE.finditer(expr):
        if int(m.group(1)) > 10_000:
            return "a factorial of more than 10000"
    for m in _POWER_RE.finditer(expr):
        log10 = _exponent_log10(expr, m.end())
        if log10 > _LOG10_MAX_EXPONENT:
            return f"a power with an exponent above {MAX_EXPONENT}"
    return None


_LOG10_MAX_EXPONENT = len(str(MAX_EXPONENT)) - 1  # 5


_EXPONENT_TOKEN_RE = re.compile(r"-?\d+|[A-Za-z]")
_INTEGER_RE = re.compile(r"-?(\d+)")
_NUMERIC_POWER_RE = re.compile(r"(\d+)\s*(?:\^|\*\*)")


def _log10_int(digits: str) -> float:
    digits = digits.lstrip("0") or "0"
    head = int(digits[:15]) or 1
    return len(digits) - len(str(head)) + math.log10(head) if len(digits) > 15 else math.log10(head)


def _exponent_log10(expr: str, i: int) -> float:
    """log10 of the value of the exponent that starts at ``expr[i]`` when it is numeric (a number, or a numeric power
    tower: ``{10^{10}}``, ``2**40`` after ``2**``), else 0."""
    while i < len(expr) and expr[i] == " ":
        i += 1
    if i < len(expr) and expr[i] in "{(":
        close = {"{": "}", "(": ")"}[expr[i]]
        depth, j = 0, i
        while j < len(expr):
            if expr[j] == expr[i]:
                depth += 1
            elif expr[j] == close:
                depth -= 1
                if depth == 0:
                    break
            j += 1
        body, j = expr[i + 1 : j].strip(), j + 1
    else:
        m = _EXPONENT_TOKEN_RE.match(expr, i)
        body, j = (m.group(), m.end()) if m else ("", i)
    rest = expr[j:].lstrip()
    if _INTEGER_RE.fullmatch(body) and rest.startswith(("**", "^")):  # a right-associative tower: 2**2**40
        body = body + rest
    m = _INTEGER_RE.fullmatch(body)
    if m:
        return _log10_int(m.group(1))
    m = _NUMERIC_POWER_RE.match(body)
    if m:  # a numeric power inside the exponent: log10(b^e) = e * log10(b)
        inner = _exponent_log10(body, m.end())
        return math.inf if inner > 15 else 10**inner * math.log10(max(int(m.group(1)[:15]), 2))
    return 0.0


# -- equivalence ------------------------------------------------------------------------------------------------------

_SPACING_RE = re.compile(r"\\left|\\right|\\[,!;: ]|\\displaystyle|\s|\$")


_FRACTION_MACROS_RE = re.compile(r"\\(?:[dtcs]|nice)frac(?![A-Za-z])")


def normalize(expr: str) -> str:
    """``expr`` without LaTeX spacing, ``$``, ``\\left``/``\\right`` and with ``\\dfrac``, ``\\tfrac``, ``\\cfrac``,
    ``\\sfrac``, ``\\nicefrac`` as ``\\frac``."""
    expr = _SPACING_RE.sub("", expr)
    if expr.endswith("\\") and not expr.endswith("\\\\"):
        expr = expr[:-1]  # a stray backslash that ends the answer
    return _FRACTION_MACROS_RE.sub(r"\\frac", latex(expr))


_SUPERSCRIPTS = str.maketrans({c: f"^{{{d}}}" for d, c in enumerate("⁰¹²³⁴⁵⁶⁷⁸⁹")})


def latex(expr: str) -> str:
    """``expr`` with the Unicode that math-verify does not read as LaTeX: ``°`` -> ``^\\circ``, ``−`` (minus) and
    ``–`` (en dash) -> ``-``, superscript digits ``4²`` -> ``4^{2}``."""
    return expr.replace("°", "^\\circ").replace("−", "-").replace("–", "-").translate(_SUPERSCRIPTS)


_NUMBER_FORM_RE = re.compile(
    r"(-)?(?:(\d+)(?=\\frac))?(?:\\frac\{(-?\d+)\}\{(-?\d+)\}|\\frac(\d)(\d)|(\d[\d,]*(?:\.\d+)?)(?:/(\d+))?)"
)


def parse_number(expr: str) -> Fraction | None:
    """``expr`` as an exact rational when it is a plain number: ``-12``, ``1,234``, ``0.5``, ``3/4``, ``\\frac{3}{4}``,
    ``\\dfrac34``, ``2\\frac{1}{2}``, ``1\\!000``; else None."""
    s = _SEPARATOR_RE.sub("", normalize(expr)).replace("−", "-")
    if not s or len(s) > MAX_DIGITS:
        return None
    m = _NUMBER_FORM_RE.fullmatch(s)
    if not m:
        return None
    neg, whole, fn, fd, fn1, fd1, dec, den = m.groups()
    try:
        if dec is not None:
            if _decimal_comma(dec):
                dec = dec.replace(",", ".")
            elif "," in dec and not _THOUSANDS_RE.fullmatch(dec):
                return None
            value = Fraction(dec.replace(",", ""))
            if den is not None:
                value /= int(den)
        else:
            num, d = (fn, fd) if fn is not None else (fn1, fd1)
            value = Fraction(int(num), int(d))
            if whole is not None:
                value = int(whole) + value
    except (ValueError, ZeroDivisionError):
        return None
    return -value if neg else value


_OPERATOR_RE = re.compile(r"[\w}).]\s*(?:[-+*/^×÷·⋅−]|\\times|\\cdot|\\div)\s*[\w\\({.]")
_OPERATION_RE = re.compile(
    r"\\(?:[dt]?binom|choose|sqrt|log|ln|lg|exp|sinh?|cosh?|tanh?|cot|sec|csc|arc[a-z]+|gcd|lcm|operatorname|max|min|"
    r"sum|prod|int|lfloor|rfloor|lceil|rceil|det|bmod|pmod|mod)(?![A-Za-z])|!"
)
"""A function or operation whose value is the answer, not the answer (``\\dbinom{8}{4}``, ``\\sqrt{49}``, ``6!``)."""
_NEGATION_RE = re.compile(r"\\not|\\neq?(?![A-Za-z])|≠")
"""A negation anywhere in an answer (``x \\not= 3``, ``x \\neq 3``)."""
_RELATION_RE = re.compile(
    r"\\(?:leq?|geq?|[lg]t|sim|lor|vee|land|wedge|to|mapsto|implies|pm|mp|in)(?![A-Za-z])|[<>|±∓]|:|\\\\"
)
"""A relation or several candidates in the value of an answer (``3 \\pm 1``, ``3 \\lor 4``, ``x \\le 3``, a line
break); on the left of ``=`` it is work (``|z| = 5``, ``P(X \\le 2) = 0.5``)."""
_UNIT_TEXT_RE = re.compile(r"(?:\\(?:text\w*|math\w*|mbox)\s*\{[^{}\d]*\}|\{\\rm[^{}\d]*\})(?:\^\{?-?\d\}?)?")
_TEXT_NUMBER_RE = re.compile(r"\\(?:text\w*|math\w*|mbox|boldsymbol)\s*\{([^{}\d]*\d[^{}]*)\}")
_UNIT_POWER_RE = re.compile(r"(?<=[A-Za-z])\^\{?-?\d\}?")
_MIXED_SPACE_RE = re.compile(r"(\d+)\s+(\d+)/(\d+)")
_DIGIT_SPACE_RE = re.compile(r"(?<=\d),\s+(?=\d)|(?<=\d)\s+(?=\d)(?!\d{3}(?!\d))")
_DETACHED_MINUS_RE = re.compile(r"(?<![\w)}])-((?:\\[A-Za-z]*|[{(])+)(?=\d)")
_PMOD_RE = re.compile(r"\\pmod\{?\d+\}?|\(\\mod\{?\d+\}?\)")
_BASE10_RE = re.compile(r"(?<=\d)_\{?\(?10\)?\}?")
_OVER_RE = re.compile(r"\{(-?\d+)\\over(-?\d+)\}")
_DEGREE_RE = re.compile(r"\^\{?\\circ\}?")
_BARE_DECIMAL_RE = re.compile(r"(?<![\d.])\.(?=\d)")
_SCIENTIFIC_RE = re.compile(r"(-?)(?:(\d+(?:\.\d+)?)(?:\\times|\\cdot|[*×·]))?10\^\{?(-?\d{1,4})\}?")


_RELATION = "a relation or several candidates"


def unworked(pred: str) -> str | None:
    r"""Why ``pred``, graded against a gold answer that is a plain number, is not a stated value, or None.

    A careful grader gives credit for the value, not for an expression that evaluates to it: copying the question
    with its operands reordered or in parentheses (``(4 - 1 - 7)``, ``6 \times 8``, ``3*12+5``), a function of the
    question's numbers (``\dbinom{8}{4}``, ``\sqrt{49}``, ``6!``, ``\gcd(12, 18)``), a fraction not in lowest terms
    (``\frac{84}{144}`` for ``\frac{7}{12}``, ``\frac{14}{2}`` for 7), a relation or hedge (``x \neq 3``,
    ``3 \pm 1``, ``3 \text{ (or 4)}``, ``1 \text{ or } 8``), or an equation between two different numbers
    (``4 = 3``, ``3 \approx 4``). Allowed around the one number: ``x =`` and the work before the last ``=``
    (``4 - 1 - 7 = -4``, ``|z| = 5``, ``P(X \le 2) = 0.5``), ``\approx`` and ``\equiv`` as ``=`` (``\pi \approx 3.14``,
    ``n \equiv 5 \pmod{7}``), units (``5 \text{ cm}``, ``m^2``, ``{\rm m}\,\text{s}^{-1}``), ``\%``, ``^\circ``,
    ``\$``, a base-10 subscript (``27_{10}``), thousands separators, a mixed number with a space (``2 1/2``), a minus
    sign before a brace or macro (``-{4}``, ``-\$4``), ``\cfrac``/``\sfrac``/``{3 \over 4}``, and scientific notation
    (``1.5 \times 10^{3}``, ``10^5``).

    Returns: ``"a relation or several candidates"``, ``"an operation"``, ``"several numbers"``,
    ``"a number joined to letters or symbols"`` (``x - 4``, ``4x^2``, ``\frac{x}{4}``, ``3\pi``: ``_joined``),
    ``"a fraction not in lowest terms"``, ``"an equation between different numbers"``, or None.
    """
    return _stated(pred)[1]


def stated_value(pred: str) -> Fraction | None:
    r"""The one number ``pred`` states, exactly (``"x = -4"`` -> -4, ``"12 \text{ cm}^2"`` -> 12, ``"25\%"`` -> 25,
    ``"1.5 \times 10^{3}"`` -> 1500), or None when it states none or is ``unworked``. Against a gold answer that is a
    plain number this is the whole comparison: ``stated_value(pred) == parse_number(gold)``; units, ``\%`` and
    ``^\circ`` are read as words around the number, not converted."""
    return _stated(pred)[0]


def _stated(pred: str) -> tuple[Fraction | None, str | None]:
    """``(stated_value, unworked reason)`` of ``pred``: one of them is None."""
    s = _DIGIT_SPACE_RE.sub(";", _MIXED_SPACE_RE.sub(r"\1\\frac{\2}{\3}", pred))  # 2 1/2; 1 8, 1, 8 are not 18
    s = normalize(s).replace("{-}", "-")
    if _NEGATION_RE.search(s):
        return None, _RELATION
    s = _DETACHED_MINUS_RE.sub(r"\1-", s)  # -{4}, -\$4, -(4) -> {-4}, \$-4, (-4)
    s = _TEXT_NUMBER_RE.sub(r"\1", s)  # \textbf{5}, \text{5 cm}: the number is the content
    s = _UNIT_POWER_RE.sub("", _UNIT_TEXT_RE.sub(";", s))  # a unit separates: 1 \text{ or } 8 is not 18
    s = _SEPARATOR_RE.sub("", _DEGREE_RE.sub("", _BASE10_RE.sub("", _PMOD_RE.sub("", s))))
    s = _OVER_RE.sub(r"\\frac{\1}{\2}", _BARE_DECIMAL_RE.sub(r"0.", s))  # .5 -> 0.5
    s = s.replace("\\equiv", "=").replace("\\approx", "=").replace("≈", "=")
    *sides, s = s.split("=")
    if _RELATION_RE.search(s):
        return None, _RELATION
    if _OPERATION_RE.search(s):
        return None, "an operation"
    m = _SCIENTIFIC_RE.fullmatch(s)
    if m:
        value = (-1 if m.group(1) else 1) * Fraction(m.group(2) or 1) * Fraction(10) ** int(m.group(3))
    else:
        numbers = _number_spans(s)
        if len(numbers) > 1:
            return None, "several numbers"
        if not numbers:
            return None, None
        start, end, number = numbers[0]
        if _joined(s, start, end) or _glued_product(pred):
            return None, "a number joined to letters or symbols"
        if _unreduced(number):
            return None, "a fraction not in lowest terms"
        value = parse_number(number)
    if any(v is not None and v != value for v in map(parse_number, sides)):
        return None, "an equation between different numbers"
    return value, None


_MACRO_RE = re.compile(r"\\([A-Za-z]+)")
_WORDS_MACROS = frozenset(
    {"quad", "qquad", "circ", "degree", "textdegree", "dollar", "euro", "pounds", "cent"}
    | {"underline", "bf", "rm", "it", "bm", "textstyle", "color"}
)
"""Macros that may stand around a stated number: spacing, degrees, currency and type style (``\\underline{5}``,
``{\\bf 5}``, ``\\color{red}5``); any other macro left in the answer
(``\\pi``, ``\\frac{x}{4}``, ``\\sqrt``, ``\\alpha``, ``\\infty``) makes the number part of an expression."""
_OPERATOR_CHARS = frozenset("+-*/^_×÷·⋅−")
_UNIT_LETTERS = frozenset({"m", "g", "s", "h", "L", "l", "K"})
"""Single letters read as units right after a number (``5m``, ``3 g``, ``2h``); any other single letter there is a
variable (``4x``, ``3 + i``, ``2n``)."""


def _joined(s: str, start: int, end: int) -> bool:
    r"""Whether the one number ``s[start:end]`` of a normalized answer (no spaces) is joined to letters or symbols by
    an operation or juxtaposition, so that the answer is an expression, not the number: a macro other than spacing,
    degrees or currency anywhere in the answer (``3\pi``, ``rac{x}{4}``, ``4\sqrt{x}``), an operator right before
    or after the number (``x-4``, ``x^{4}``, ``3+i``, ``4/n``, ``4_b``), a bracket opening right after it (``4(x+1)``),
    or a single letter right after it that is not a unit (``4x^2``, ``AZYUK2A``, ``3i``), or right before it
    (``x4``). Words and units stay: ``5cm``, ``12m`` (from ``12 m^2``), ``5apples``, ``\$5``, ``5\%``. Linear."""
    rest = s[:start] + " " + s[end:]
    if any(m.group(1) not in _WORDS_MACROS for m in _MACRO_RE.finditer(rest)):
        return True
    i = start - 1
    while i >= 0 and s[i] in "{([$":
        i -= 1
    if i > 0 or (i == 0 and s[i] != "+"):  # a leading + is a sign: +7
        if s[i] in _OPERATOR_CHARS or (_is_letter(s[i]) and (i == 0 or not _is_letter(s[i - 1]))):
            return True  # x-4, x^{4}, x4 (a single letter right before)
    j = end
    while j < len(s) and s[j] in "})]":
        j += 1
    if j < len(s) and (s[j] in _OPERATOR_CHARS or s[j] in "([" or (j > end and s[j] == "{")):
        return True
    if j < len(s) and _is_letter(s[j]):
        k = j
        while k < len(s) and _is_letter(s[k]):
            k += 1
        if k - j == 1 and s[j] not in _UNIT_LETTERS:
            return True  # 4x, 3i, AZYUK2A
    return False


_GLUED_RE = re.compile(r"\d([A-Za-z]{2,})(?![A-Za-z])")
_GLUED_WORDS = frozenset(
    "mm cm dm km mi ft yd in inch inches mg kg lb lbs oz ml mL cl dl kl ms min mins hr hrs sec secs mph kph kmh "
    "st nd rd th am pm AM PM rad deg sq cu cm2 Hz kHz MHz GHz kW MW mA kV mV kJ MJ cal kcal mol km2 m2 m3".split()
)
"""Words that may be glued to a number as units or ordinals (``5cm``, ``3rd``, ``10am``)."""


def _glued_product(pred: str) -> bool:
    """Whether ``pred`` (as written, spaces kept) glues two letters or more that are not a unit to a digit (``4ab``,
    ``2xy``): a product of variables, which spaces removed would make look like ``4 apples``."""
    return any(m.group(1) not in _GLUED_WORDS for m in _GLUED_RE.finditer(pred))


def _is_letter(c: str) -> bool:
    """An ASCII letter (a variable or a unit); other scripts are words around the number (``吨``)."""
    return c.isascii() and c.isalpha()


def _unreduced(number: str) -> bool:
    """Whether ``number`` (from ``_numbers``) is a fraction ``a/b`` of integers with ``gcd(a, b) > 1`` or ``b = 1``."""
    m = _NUMBER_FORM_RE.fullmatch(number)
    if not m:
        return False
    _, _, fn, fd, fn1, fd1, dec, den = m.groups()
    a, b = (fn, fd) if fn is not None else (fn1, fd1) if fn1 is not None else (dec, den)
    if b is None or not a.lstrip("-").isdigit():
        return False
    return abs(int(b)) == 1 or math.gcd(int(a), int(b)) > 1


def restates(pred: str, prompt: str, gold: str = "") -> bool:
    """Whether ``pred`` restates the question: it holds an operator or a function (``59 + 63``, ``(x+1)^2``,
    ``\\sqrt{245}``, ``\\dbinom{8}{4}``) and appears in ``prompt`` (spacing aside), and it is not the gold answer
    itself (nor equal to it as a plain number: ``1/2`` for ``\\frac{1}{2}``)."""
    if not prompt:
        return False
    p = normalize(pred)
    if not (_OPERATOR_RE.search(pred) or _OPERATION_RE.search(p)):
        return False
    p = p.lower()
    return bool(p) and p in normalize(prompt).lower() and p != normalize(gold).lower() and not quick_equal(gold, pred)


_AMBIGUOUS_COMMA_RE = re.compile(r"-?[1-9]\d{0,2},\d\d")
"""A gold that ``parse_number`` reads with a decimal comma but could be a list of two numbers: ``10,20``, ``2,74``."""


def quick_equal(gold: str, pred: str) -> bool | None:
    """Equivalence decided without sympy: False for an empty gold or prediction; for a gold that is a plain number
    (``parse_number``), whether ``pred`` states it (``stated_value(pred) == parse_number(gold)``, exact), except
    that a gold such as ``10,20`` (read as 10.2, but also two numbers) that ``pred`` does not state is left to
    math-verify, which reads it as a list; True for other golds equal to ``pred`` as normalized strings; None when
    math-verify must decide."""
    g, p = normalize(gold), normalize(pred)
    if not g or not p:
        return False
    gold_value = parse_number(gold)
    if gold_value is not None:
        if stated_value(pred) == gold_value:
            return True
        # "10,20": a decimal comma (10.2) or a list of two numbers; the list reading is math-verify's to decide
        return None if _AMBIGUOUS_COMMA_RE.fullmatch(g) else False
    return True if g == p else None


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    import logging

    from math_verify import parse

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeouts disabled": they are, on purpose

    return parse(f"\\boxed{{{gold}}}", parsing_timeout=None)


def verify_latex(gold: str, pred: str) -> bool:
    """math-verify's equivalence of two extracted answers, its timeouts off (they use ``signal.alarm``): run it in a
    process that can be killed (:mod:`apo.tasks.bounded`). String equality when either side does not parse."""
    from math_verify import parse, verify

    gold, pred = latex(gold), latex(pred)
    gold_parsed = _parse_gold(gold)
    pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return normalize(gold) == normalize(pred)
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def warm_up() -> None:
    """Run math-verify once on each kind of answer, so that sympy's lazy imports are not charged to a completion."""
    for gold, pred in (
        ("2\\sqrt{3}", "\\sqrt{12}"),
        ("(-\\infty, 3]", "(-\\infty,3]"),
        ("x^2+1", "1+x^2"),
        ("\\pi", "3"),
    ):
        verify_latex(gold, pred)
    _parse_gold.cache_clear()


def math_equal(gold: str, pred: str) -> bool:
    """Whether ``pred`` earns credit against ``gold`` (``"\\frac{1}{2}"`` vs ``"0.5"``), in this process, as
    ``math_reward`` decides it (without the prompt): False for either side ``too_large``; else ``quick_equal``
    (empty sides, plain-number golds, equal strings), then ``verify_latex``.

    Not bounded in time by itself beyond the size guards; the rewards run ``verify_latex`` in a killable process."""
    if too_large(gold) or too_large(pred):
        return False
    quick = quick_equal(gold, pred)
    return quick if quick is not None else verify_latex(gold, pred)


@functools.lru_cache(maxsize=64)
def _rg_score_fn(name: str):
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(name)


def rg_score(source_dataset: str, answer: str, entry: dict) -> float:
    """reasoning-gym's own score (0..1, partial credit) of ``answer`` for the item ``entry`` of ``source_dataset``."""
    return float(_rg_score_fn(source_dataset)(answer, entry))
