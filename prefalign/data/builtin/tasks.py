"""Task families of the built-in data set: prompts, checkers and programmatic right/wrong responses.

Every family is a kind of short instruction whose answer a program can verify. A family knows

* its *items* (``groups``): the underlying questions, e.g. the operand pair ``(23, 45)`` or the country
  ``France``. Splits are made by item, so one item never appears in two splits (different phrasings of the
  same item stay in one split). The weekday family is the one exception: with seven weekdays there are too
  few items, so each phrasing is its own item and the same weekday can appear in two splits under different
  wordings; prompt texts never repeat across splits.
* its *phrasings* (``prompts``): one-sentence plain-string prompts for an item, each with a ``checker`` dict
  that holds everything needed to verify an answer later (``{"family": "add2", "operands": [23, 45],
  "answer": 68}``);
* plausible *variants*: programmatic responses meant to be right or wrong, short ("68") and verbose
  ("The answer is 68."), including the embedded model's typical mistakes ("23 + 45 = 78"). The intended
  label of a variant is never trusted: the build script labels every response with :func:`check_response`.
* its checker rule (``check``), documented in each family's docstring.

Checkers parse leniently, because the embedded model (SmolLM2-135M-Instruct) answers verbosely ("The capital
of Egypt is Cairo.") and generations are cut after a few dozen tokens. Matching is case-insensitive and
accent-insensitive unless a family says otherwise, and words match as whole words ("cat" does not match
"category").

:func:`check_response` is the public entry point; evaluation code calls it on new generations.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

Checker = dict[str, Any]


@dataclass(frozen=True)
class PromptSpec:
    """One phrasing of one item: the prompt text and the checker that verifies answers to it."""

    prompt: str
    checker: Checker


@dataclass(frozen=True)
class Variant:
    """A programmatic response with the label it was *meant* to have (the checker decides the real one)."""

    text: str
    intended_correct: bool


# ---------------------------------------------------------------------------------------------------------
# Lenient parsing helpers
# ---------------------------------------------------------------------------------------------------------

_UNITS = {
    word: value
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen".split()
    )
}
_TENS = {
    word: 10 * (index + 2) for index, word in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())
}
_NUMBER_TOKEN = re.compile(r"(?<![a-z0-9])-?\d+(?:\.\d+)?|\d+(?:\.\d+)?|[a-z]+")
# "1. 17" / "- 17" at the start of a line is a list marker, not a number of the answer
_LIST_MARKER = re.compile(r"(?m)^[ \t]*(?:\d+[.)]|[-*\u2022])[ \t]+(?=\S)")
_WORD_CHAR = r"A-Za-z0-9"

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def fold(text: str) -> str:
    """Lower-case ``text`` and strip accents, so "Bogotá" matches "bogota"."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char)).lower()


def contains_word(text: str, word: str, *, case_sensitive: bool = False, plural: bool = False) -> bool:
    """Whether ``word`` occurs in ``text`` as a whole word (or phrase; any run of spaces matches a space).

    Args:
        text: the response.
        word: the word or multi-word phrase to find.
        case_sensitive: compare exactly (used for upper-case answers); otherwise case- and accent-insensitive.
        plural: also accept the word followed by "s" or "es" ("apples" for "apple").
    """
    if not case_sensitive:
        text, word = fold(text), fold(word)
    body = r"\s+".join(re.escape(part) for part in word.split())
    suffix = r"(?:s|es)?" if plural else ""
    pattern = rf"(?<![{_WORD_CHAR}]){body}{suffix}(?![{_WORD_CHAR}])"
    return re.search(pattern, text) is not None


def extract_numbers(text: str) -> list[int | float]:
    """All numbers in ``text`` in order of appearance, written with digits or in English words.

    "23 + 45 = sixty-eight" gives ``[23, 45, 68]``; "one hundred and two" gives ``[102]``. A decimal such as
    "68.5" stays a float (so it never equals an integer answer); "68.0" counts as 68.
    """
    numbers: list[int | float] = []
    current: int | None = None
    state: str | None = None  # what the last word of the running number-word phrase was

    def flush() -> None:
        nonlocal current, state
        if current is not None:
            numbers.append(current)
        current, state = None, None

    # a hyphen between letters joins number words ("sixty-eight"); before digits it is a minus sign
    for token in _NUMBER_TOKEN.findall(re.sub(r"(?<=[a-z])-(?=[a-z])", " ", fold(text))):
        if token[-1].isdigit():
            flush()
            value = float(token)
            numbers.append(int(value) if value.is_integer() else value)
        elif token in _UNITS:
            unit = _UNITS[token]
            if current is not None and state == "tens" and unit < 10:  # "sixty eight"
                current += unit
                state = "done"
            elif current is not None and state in ("hundred", "and"):  # "one hundred (and) two"
                current += unit
                state = "done" if unit >= 10 or unit == 0 else "unit_after_hundred"
            else:
                flush()
                current, state = unit, "unit"
        elif token in _TENS:
            if current is not None and state in ("hundred", "and"):
                current += _TENS[token]
            else:
                flush()
                current = _TENS[token]
            state = "tens"
        elif token == "hundred" and current is not None and state == "unit" and 0 < current < 10:
            current *= 100
            state = "hundred"
        elif token == "and" and state == "hundred":
            state = "and"
        else:
            flush()
    flush()
    return numbers


def last_number(text: str) -> int | float | None:
    """The last number in ``text`` (digits or words), or ``None``."""
    numbers = extract_numbers(text)
    return numbers[-1] if numbers else None


def _capitalise(word: str) -> str:
    return word[:1].upper() + word[1:]


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


def _swap_adjacent(word: str, rng: random.Random) -> str:
    """``word`` with two adjacent, different letters swapped (a plausible misspelling), or ``word`` itself."""
    positions = [index for index in range(len(word) - 1) if word[index] != word[index + 1]]
    if not positions:
        return word
    index = rng.choice(positions)
    return word[:index] + word[index + 1] + word[index] + word[index + 2 :]


# ---------------------------------------------------------------------------------------------------------
# Families
# ---------------------------------------------------------------------------------------------------------


class TaskFamily:
    """Base class: a family of checkable instructions.

    Subclasses set ``name`` and ``description`` and implement :meth:`groups`, :meth:`prompts`,
    :meth:`variants`, :meth:`reference` and :meth:`check`.
    """

    name: str = ""
    description: str = ""
    #: ``False`` when items are too few to keep them apart across splits (see the module docstring).
    split_by_item: bool = True

    def groups(self) -> list[Hashable]:
        """All items of the family, in a fixed order (the build shuffles them with its seed)."""
        raise NotImplementedError

    def prompts(self, group: Hashable) -> list[PromptSpec]:
        """All phrasings of one item."""
        raise NotImplementedError

    def variants(self, checker: Checker, rng: random.Random) -> list[Variant]:
        """Programmatic right and wrong responses for a prompt with this checker."""
        raise NotImplementedError

    def reference(self, checker: Checker) -> str:
        """A correct, complete-sentence answer (the ``reference_answer`` of test prompts)."""
        raise NotImplementedError

    def check(self, checker: Checker, response: str) -> bool:
        """Whether ``response`` answers the prompt correctly (rule in the subclass docstring)."""
        raise NotImplementedError


class _Addition(TaskFamily):
    """Addition; correct when the **last number** in the response (digits or words) equals the sum.

    Verbose answers pass ("23 + 45 = 68", "The answer is sixty-eight."); an answer followed by more numbers
    does not ("68, because 23 and 45" ends in 45), which is the price of a rule that needs no parser.
    """

    templates: tuple[str, ...] = ()

    def prompts(self, group: Hashable) -> list[PromptSpec]:
        left, right = group  # type: ignore[misc]
        checker = {"family": self.name, "operands": [left, right], "answer": left + right}
        return [PromptSpec(template.format(a=left, b=right), checker) for template in self.templates]

    def check(self, checker: Checker, response: str) -> bool:
        return last_number(response) == checker["answer"]

    def reference(self, checker: Checker) -> str:
        left, right = checker["operands"]
        return f"{left} + {right} = {checker['answer']}"

    def variants(self, checker: Checker, rng: random.Random) -> list[Variant]:
        left, right = checker["operands"]
        answer = checker["answer"]
        off_by_one = answer + rng.choice((-1, 1))
        # the model's typical slips: a dropped or doubled carry (off by ten), or a number near an operand
        off_by_ten = answer + 10 if answer < 10 or rng.random() < 0.5 else answer - 10
        near_operand = max(left, right) + rng.choice((-2, -1, 1, 2))
        if near_operand == answer:
            near_operand += 3
        return [
            Variant(str(answer), True),
            Variant(f"The answer is {answer}.", True),
            Variant(f"{left} + {right} = {answer}", True),
            Variant(f"{left} plus {right} equals {answer}.", True),
            Variant(str(off_by_one), False),
            Variant(f"The answer is {off_by_ten}.", False),
            Variant(f"{left} + {right} = {near_operand}", False),
            Variant(f"{left} + {right} = {off_by_one}", False),
        ]


class TwoDigitAddition(_Addition):
    __doc__ = 'Two-digit addition, "answer with just the number". The embedded model fails it ("29 + 14 = 31").\n\n' + (
        _Addition.__doc__ or ""
    )

    name = "add2"
    description = "two-digit addition, answer with just the number"
    templates = (
        "What is {a} + {b}? Answer with just the number.",
        "What is {a} plus {b}? Answer with just the number.",
        "Add {a} and {b}. Answer with just the number.",
    )

    def groups(self) -> list[Hashable]:
        # unordered: "23 + 45" and "45 + 23" are the same item and stay in one split
        return [(left, right) for left in range(10, 100) for right in range(left, 100)]

    def prompts(self, group: Hashable) -> list[PromptSpec]:
        left, right = group  # type: ignore[misc]
        return super().prompts((left, right)) + (super().prompts((right, left)) if left != right else [])


class OneDigitAddition(_Addition):
    __doc__ = "Single-digit addition (the embedded model: about half right).\n\n" + (_Addition.__doc__ or "")

    name = "add1"
    description = "single-digit addition"
    templates = ("What is {a} + {b}?", "What is {a} plus {b}?", "Add {a} and {b}.")

    def groups(self) -> list[Hashable]:
        # ordered pairs: with 81 items, unordered ones would be too few for three balanced splits
        return [(left, right) for left in range(1, 10) for right in range(1, 10)]


class LargerNumber(TaskFamily):
    """Which of two two-digit numbers is larger.

    Rule: the response must state a verdict, and the first one it states must be the larger number. A
    verdict is a response that is just a number ("82", "82."), or a phrase "82 is larger/bigger/greater/
    higher (than 47)", "the larger/bigger/greater number is 82", "47 is smaller/less/lower than 82" (verdict
    82) or "the answer is 82" (numbers in digits). "47 is not larger" is no verdict. Merely mentioning one
    of the numbers is not enough: the model's typical answer restates the question ("we need to find the
    greatest common factor of 98 and 9...") and is cut off before concluding.
    """

    name = "larger"
    description = "which of two numbers is larger"
    templates = (
        "Which number is larger, {a} or {b}?",
        "Which is bigger: {a} or {b}?",
        "Which number is greater, {a} or {b}?",
    )
    _NUMBER = r"(-?\d+)(?![\d.]\d)"
    _COMPARATIVE = r"(?:larger|bigger|greater|higher)"
    # (pattern, which captured group is the verdict)
    _VERDICTS = (
        (re.compile(rf"^\W*{_NUMBER}\W*$"), 1),
        (re.compile(rf"(?<![\d.]){_NUMBER}\s+is\s+(?:the\s+)?{_COMPARATIVE}"), 1),
        (re.compile(rf"(?<![\d.]){_NUMBER}\s+is\s+(?:smaller|less|lower)\s+than\s+{_NUMBER}"), 2),
        (re.compile(rf"{_COMPARATIVE}(?:\s+number|\s+one|\s+of\s+the\s+two)?\s+is\s+{_NUMBER}"), 1),
        (re.compile(rf"answer\s+is\s*:?\s*{_NUMBER}"), 1),
    )

    def groups(self) -> list[Hashable]:
        return [(low, high) for low in range(10, 100) for high in range(low + 1, 100)]

    def prompts(self, group: Hashable) -> list[PromptSpec]:
        low, high = group  # type: ignore[misc]
        checker = {"family": self.name, "answer": high, "other": low}
        return [
            PromptSpec(template.format(a=first, b=second), checker)
            for template in self.templates
            for first, second in ((low, high), (high, low))
        ]

    def check(self, checker: Checker, response: str) -> bool:
        text = fold(response).strip()
        verdicts = []
        for pattern, group in self._VERDICTS:
            match = pattern.search(text)
            if match:
                verdicts.append((match.start(), int(match.group(group))))
        return bool(verdicts) and min(verdicts)[1] == checker["answer"]

    def reference(self, checker: Checker) -> str:
        return f"{checker['answer']} is larger than {checker['other']}."

    def variants(self, checker: Checker, rng: random.Random) -> list[Variant]:
        right, wrong = checker["answer"], checker["other"]
        return [
            Variant(str(right), True),
            Variant(f"{right} is larger.", True),
            Variant(f"The larger number is {right}.", True),
            Variant(f"{right} is larger than {wrong}.", True),
            Variant(str(wrong), False),
            Variant(f"{wrong} is larger.", False),
            Variant(f"The larger number is {wrong}.", False),
            Variant(f"{wrong} is larger than {right}.", False),
            Variant("Both numbers are equal.", False),
        ]


WORDS = tuple(
    """
    apple garden river window pencil banana table chair house water bread cloud stone music paper tiger horse
    lemon candle forest mountain ocean island bridge castle rocket planet winter summer flower butter cookie
    rabbit turtle dragon jacket pocket basket bottle button carpet doctor farmer finger guitar hammer helmet
    kitten ladder magnet marble mirror monkey needle orange parrot pepper pillow potato puzzle saddle salmon
    school shadow silver spider square ticket tomato tunnel violin wallet wizard yellow zipper anchor arrow
    beach berry blanket branch brick brush cabin camera canvas carrot cheese cherry circle clock coffee copper
    cotton desert dinner eagle engine feather fence field flame glass globe grape grass honey iron jelly
    jungle kettle kitchen knife lamp leaf letter lizard market meadow melon metal moon nest night noodle oven
    owl palace panda peach pearl piano pirate plate pond puppy queen rain robot rose sand scarf seed sheep
    shell shoe sky snake snow sock spoon star storm sugar sun sweater teacher tent thunder tooth towel tower
    train tree truck valley wagon whale wheel wolf wood zebra bird book boat cake coat door fish frog gate
    hill king kite lake milk road ring salt ship soup elephant umbrella dinosaur notebook sandwich airplane
    computer treasure blueberry chocolate
    """.split()
)


class Capitalise(TaskFamily):
    """Write a word in capital letters.

    Rule: the upper-case word appears as a whole word, **case-sensitively** ("GARDEN" or "The word is
    GARDEN."); "Garden", "GARDENS" or "G-A-R-D-E-N" do not count.
    """

    name = "upper"
    description = "write a word in capital letters"
    templates = (
        "Write the word '{w}' in capital letters.",
        "Write '{w}' in all capital letters.",
        "Convert the word '{w}' to uppercase.",
    )

    def groups(self) -> list[Hashable]:
        return list(WORDS)

    def prompts(self, group: Hashable) -> list[PromptSpec]:
        checker = {"family": self.name, "word": group, "answer": str(group).upper()}
        return [PromptSpec(template.format(w=group), checker) for template in self.templates]

    def check(self, checker: Checker, response: str) -> bool:
        return contains_word(response, checker["answer"], case_sensitive=True)

    def reference(self, checker: Checker) -> str:
        return f"The word in capital letters is {checker['answer']}."

    def variants(self, checker: Checker, rng: random.Random) -> list[Variant]:
        word, upper = checker["word"], checker["answer"]
        misspelt = _swap_adjacent(word, rng).upper()
        return [
            Variant(upper, True),
            Variant(f"{upper}.", True),
            Variant(f"The word in capital letters is {upper}.", True),
            Variant(word, False),
            Variant(_capitalise(word), False),
            Variant(f"The word in capital letters is {_capitalise(word)}.", False),
            Variant(f'The word "{word}" is a capital letter.', False),
        ] + ([Variant(misspelt, False)] if misspelt != upper else [])


class NextWeekday(TaskFamily):
    """The day after / before / two days after a weekday.

    Rule: the right weekday appears and no weekday other than it and the one named in the prompt does
    ("The day after Tuesday is Wednesday." passes; "Tuesday, Wednesday or Thursday" does not).

    Only 7 weekdays x 3 offsets exist, so each phrasing is its own item (``split_by_item = False``): the
    same weekday question can appear in two splits under different wordings, never with the same text.
    """

    name = "weekday"
    description = "the day after (or before) a weekday"
    split_by_item = False
    templates: ClassVar[dict[int, tuple[str, ...]]] = {
        1: (
            "What day comes after {d}?",
            "What is the day after {d}?",
            "If today is {d}, what day is tomorrow?",
            "Which day of the week follows {d}?",
            "Name the day that comes after {d}.",
        ),
        -1: (
            "What day comes before {d}?",
            "What is the day before {d}?",
            "If today is {d}, what day was yesterday?",
            "Which day of the week comes just before {d}?",
            "Name the day that comes before {d}.",
        ),
        2: (
            "What day is two days after {d}?",
            "If today is {d}, what day is the day after tomorrow?",
            "Which day of the week comes two days after {d}?",
            "Name the day that is two days after {d}.",
            "What day will it be two days after {d}?",
        ),
    }

    def groups(self) -> list[Hashable]:
        return [
            (day, offset, index)
            for day in range(7)
            for offset in (1, -1, 2)
            for index in range(len(self.templates[offset]))
        ]

    def prompts(self, group: Hashable) -> list[PromptSpec]:
        day, offset, index = group  # type: ignore[misc]
        given, answer = WEEKDAYS[day], WEEKDAYS[(day + offset) % 7]
        checker = {"family": self.name, "given": given, "offset": offset, "answer": answer}
        return [PromptSpec(self.templates[offset][index].format(d=given), checker)]

    def check(self, checker: Checker, response: str) -> bool:
        allowed = {checker["answer"], checker["given"]}
        if not contains_word(response, checker["answer"]):
            return False
        return not any(contains_word(response, day) for day in WEEKDAYS if day not in allowed)

    def _relation(self, checker: Checker) -> str:
        return {1: "The day after", -1: "The day before", 2: "Two days after"}[checker["offset"]]

    def reference(self, checker: Checker) -> str:
        return f"{self._relation(checker)} {checker['given']} is {checker['answer']}."

    def variants(self, checker: Checker, rng: random.Random) -> list[Variant]:
        given, answer, offset = checker["given"], checker["answer"], checker["offset"]
        day = WEEKDAYS.index(given)
        # the classic confusions: the other direction, one day too far, a random other day
        other_direction = WEEKDAYS[(day - offset) % 7]
        too_far = WEEKDAYS[(day + offset + (1 if offset > 0 else -1)) % 7]
        others = [name for name in WEEKDAYS if name not in (given, answer, other_direction, too_far)]
        random_day = rng.choice(others)
        relation = self._relation(checker)
        return [
            Variant(answer, True),
            Variant(f"{answer}.", True),
            Variant(f"{relation} {given} is {answer}.", True),
            Variant(f"It is {answer}.", True),
            Variant(other_direction, False),
            Variant(f"{relation} {given} is {too_far}.", False),
            Variant(f"{random_day}.", False),
            Variant(f"{relation} {given} is a special day in the calendar.", False),
        ]


class CountLetters(TaskFamily):
    """How many letters a word has.

    Rule: the first number directly followed by "letter(s)" equals the word's length ("The word 'field' has
    5 letters and 1 vowel." passes); without such a phrase, the **last number** in the response (digits or
    words) must equal it, as for addition ("5" passes).
    """

    name = "count_letters"
    description = "count the letters of a word"
    templates = (
        "How many letters are in the word '{w}'?",
        "How many letters does the word '{w}' have?",
        "Count the letters in the word '{w}'.",
    )

    def groups(self) -> list[Hashable]:
        return list(WORDS)

    def prompts(self, group: Hashable) -> list[PromptSpec]:
        checker = {"family": self.name, "word": group, "answer": len(str(group))}
        return [PromptSpec(template.format(w=group), checker) for template in self.templates]

    _LETTERS = re.compile(r"\b([a-z0-9]+(?:[ -][a-z]+)?)\s+letters?\b")

    def check(self, checker: Checker, response: str) -> bool:
        for match in self._LETTERS.finditer(fold(response)):
            numbers = extract_numbers(match.group(1))
            if numbers:
                return numbers[-1] == checker["answer"]
        return last_number(response) == checker["answer"]

    def reference(self, checker: Checker) -> str:
        return f"The word '{checker['word']}' has {checker['answer']} letters."

    def variants(self, checker: Checker, rng: random.Random) -> list[Variant]:
        word, answer = checker["word"], checker["answer"]
        off_by_one = answer + rng.choice((-1, 1))
        far_off = rng.choice([value for value in range(1, 13) if abs(value - answer) > 1])
        words = [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
        ]
        return [
            Variant(str(answer), True),
            Variant(f"The word '{word}' has {answer} letters.", True),
            Variant(f"There are {words[answer]} letters in '{word}'.", True),
            Variant(str(off_by_one), False),
            Variant(f"The word '{word}' has {off_by_one} letters.", False),
            Variant(f"The word '{word}' has {far_off} letters.", False),
            Variant(f"There are {words[far_off]} letters in '{word}'.", False),
        ]


class SortThree(TaskFamily):
    """Sort three distinct numbers from smallest to largest.

    Rule: the **last list of three or more numbers** in the response is exactly the sorted numbers. A list
    is numbers (in digits) separated only by commas, semicolons, "<", "->", "and", "then" or white space
    (line breaks included, list markers such as "1." at line starts ignored): "2, 5, 9", "The sorted order
    is 2, 5, 9.", "5, 2, 9 sorted is 2, 5, 9", "2 < 5 < 9" pass; "The numbers 9, 2 and 5 are in ascending
    order: 9" fails (its last list is 9, 2, 5), and so does a list of four numbers.
    """

    name = "sort3"
    description = "sort three numbers"
    templates = (
        "Sort these numbers from smallest to largest: {a}, {b}, {c}.",
        "Put these numbers in ascending order: {a}, {b}, {c}.",
        "Arrange {a}, {b} and {c} from smallest to largest.",
    )

    def groups(self) -> list[Hashable]:
        # the item is the set of numbers; one-digit and two-digit numbers mixed
        values = range(1, 60)
        return [(a, b, c) for a in values for b in values if b > a for c in values if c > b and (a + b + c) % 7 == 0]

    def prompts(self, group: Hashable) -> list[PromptSpec]:
        ordered = list(group)  # type: ignore[arg-type]
        # a fixed, unsorted presentation per template, derived from the item so prompts are reproducible
        shuffles = ((1, 2, 0), (2, 0, 1), (2, 1, 0))
        specs = []
        for template, order in zip(self.templates, shuffles, strict=True):
            shown = [ordered[index] for index in order]
            checker = {"family": self.name, "numbers": shown, "answer": ordered}
            specs.append(PromptSpec(template.format(a=shown[0], b=shown[1], c=shown[2]), checker))
        return specs

    _NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?!\w)(?!\.\d)")
    _SEPARATOR = re.compile(r"(?:[\s,;<]|->|\u2192|\band\b|\bthen\b)*")

    @classmethod
    def number_lists(cls, response: str) -> list[list[float]]:
        """Runs of numbers separated only by list separators, in order of appearance."""
        text = _LIST_MARKER.sub("", fold(response))
        runs: list[list[float]] = []
        previous_end = None
        for match in cls._NUMBER.finditer(text):
            value = float(match.group())
            if previous_end is not None and cls._SEPARATOR.fullmatch(text[previous_end : match.start()]):
                runs[-1].append(value)
            else:
                runs.append([value])
            previous_end = match.end()
        return runs

    def check(self, checker: Checker, response: str) -> bool:
        lists = [run for run in self.number_lists(response) if len(run) >= 3]
        return bool(lists) and lists[-1] == [float(value) for value in checker["answer"]]

    def reference(self, checker: Checker) -> str:
        a, b, c = checker["answer"]
        return f"From smallest to largest: {a}, {b}, {c}."

    def variants(self, checker: Checker, rng: random.Random) -> list[Variant]:
        a, b, c = checker["answer"]
        shown = checker["numbers"]
        one_swap = rng.choice(([b, a, c], [a, c, b]))
        return [
            Variant(f"{a}, {b}, {c}", True),
            Variant(f"From smallest to largest: {a}, {b}, {c}.", True),
            Variant(f"The sorted order is {a}, {b}, {c}.", True),
            Variant(f"{c}, {b}, {a}", False),
            Variant(f"The sorted order is {c}, {b}, {a}.", False),
            Variant(f"{shown[0]}, {shown[1]}, {shown[2]}", False),
            Variant(f"From smallest to largest: {one_swap[0]}, {one_swap[1]}, {one_swap[2]}.", False),
        ]


class Parity(TaskFamily):
    """Is N even (or odd)? Answer yes or no.

    Rule: if exactly one of the words "yes" / "no" appears, it is the verdict ("No, 27 is not an even
    number."); if both appear the answer is wrong (hedging). With neither, the first statement about the
    number, "N is (not) (an) even/odd" or "it is (not) even/odd", is the verdict ("14 is an even number."
    answers "Is 14 even?" with yes; "a number is odd if ..." is no statement about N).
    """

    name = "parity"
    description = "is N even or odd (yes/no)"
    templates = (
        ("Is {n} an even number? Answer yes or no.", "even"),
        ("Is {n} an odd number? Answer yes or no.", "odd"),
        ("Is the number {n} even? Answer yes or no.", "even"),
        ("Is the number {n} odd? Answer yes or no.", "odd"),
    )
    # "<N> is (not) (an) even/odd" or "it is / it's ..."; {n} is filled with the number
    _STATEMENT = (
        r"(?<![a-z0-9])(?:{n}|it)(?:\s+is|['\u2019]s)\s+(?:actually\s+|indeed\s+|definitely\s+)?"
        r"(not\s+)?(?:an?\s+)?(even|odd)\b"
    )

    def groups(self) -> list[Hashable]:
        return list(range(2, 100))

    def prompts(self, group: Hashable) -> list[PromptSpec]:
        number = int(group)  # type: ignore[arg-type]
        specs = []
        for template, asked in self.templates:
            holds = (number % 2 == 0) == (asked == "even")
            checker = {"family": self.name, "number": number, "property": asked, "answer": "yes" if holds else "no"}
            specs.append(PromptSpec(template.format(n=number), checker))
        return specs

    def check(self, checker: Checker, response: str) -> bool:
        says_yes, says_no = contains_word(response, "yes"), contains_word(response, "no")
        if says_yes != says_no:
            return ("yes" if says_yes else "no") == checker["answer"]
        if says_yes and says_no:
            return False
        match = re.search(self._STATEMENT.format(n=checker["number"]), fold(response))
        if match is None:
            return False
        stated_even = (match.group(2) == "even") != bool(match.group(1))
        asked_even = checker["property"] == "even"
        return ("yes" if stated_even == asked_even else "no") == checker["answer"]

    def reference(self, checker: Checker) -> str:
        parity = "even" if checker["number"] % 2 == 0 else "odd"
        return f"{_capitalise(checker['answer'])}, {checker['number']} is an {parity} number."

    def variants(self, checker: Checker, rng: random.Random) -> list[Variant]:
        number, answer = checker["number"], checker["answer"]
        wrong = "no" if answer == "yes" else "yes"
        parity = "even" if number % 2 == 0 else "odd"
        other = "odd" if parity == "even" else "even"
        return [
            Variant(f"{_capitalise(answer)}.", True),
            Variant(f"{_capitalise(answer)}, {number} is an {parity} number.", True),
            Variant(f"{number} is an {parity} number.", True),
            Variant(f"{_capitalise(wrong)}.", False),
            Variant(f"{_capitalise(wrong)}, {number} is an {other} number.", False),
            Variant(f"{number} is an {other} number.", False),
        ]


CATEGORIES: dict[str, tuple[str, ...]] = {
    "fruit": (
        "apple",
        "banana",
        "grape",
        "mango",
        "pear",
        "peach",
        "cherry",
        "lemon",
        "plum",
        "strawberry",
        "pineapple",
        "melon",
    ),
    "animal": (
        "horse",
        "dog",
        "lion",
        "tiger",
        "elephant",
        "rabbit",
        "cow",
        "sheep",
        "monkey",
        "zebra",
        "bear",
        "wolf",
    ),
    "color": ("blue", "red", "green", "yellow", "purple", "pink", "brown", "gray"),
    "vehicle": ("car", "bus", "bicycle", "truck", "train", "boat", "airplane", "motorcycle", "taxi", "tractor"),
    "musical instrument": (
        "piano",
        "guitar",
        "violin",
        "drum",
        "flute",
        "trumpet",
        "harp",
        "cello",
        "saxophone",
        "clarinet",
    ),
    "body part": ("hand", "foot", "knee", "elbow", "nose", "ear", "shoulder", "finger", "ankle", "chin"),
    "vegetable": ("carrot", "potato", "onion", "cabbage", "spinach", "broccoli", "lettuce", "cucumber", "celery"),
    "piece of furniture": ("chair", "table", "sofa", "bed", "desk", "shelf", "wardrobe", "stool", "bench"),
    "tool": ("hammer", "saw", "wrench", "screwdriver", "drill", "shovel", "pliers", "axe", "chisel", "rake"),
    "piece of clothing": ("shirt", "jacket", "sock", "hat", "scarf", "dress", "sweater", "coat", "glove", "skirt"),
}
# categories too close to tell apart for a quick question ("is a tomato a fruit?") are never paired
_CLOSE_CATEGORIES = {frozenset(("fruit", "vegetable"))}


class Category(TaskFamily):
    """Two-choice category question ("Which of these is a fruit: apple or chair?").

    Rule: the right option appears (also in plural, "apples") and the wrong option does not. A response
    naming both is right only when exactly one option is stated to be of the category and it is the right
    one ("The drum is a musical instrument, while the ankle is a body part."); naming neither is wrong.
    """

    name = "category"
    description = "two-choice category question"
    templates = (
        "Which of these is {art} {cat}: {a} or {b}?",
        "Which one is {art} {cat}, {a} or {b}?",
        "Pick the {cat}: {a} or {b}.",
    )

    def groups(self) -> list[Hashable]:
        items = []
        for category, members in CATEGORIES.items():
            for member in members:
                for other_category, others in CATEGORIES.items():
                    if other_category == category or frozenset((category, other_category)) in _CLOSE_CATEGORIES:
                        continue
                    items.extend((category, member, other) for other in others)
        return items

    def prompts(self, group: Hashable) -> list[PromptSpec]:
        category, member, other = group  # type: ignore[misc]
        checker = {"family": self.name, "category": category, "answer": member, "other": other}
        specs = []
        for index, template in enumerate(self.templates):
            # the right option comes first in some phrasings and second in others
            first, second = (member, other) if index % 2 == 0 else (other, member)
            text = template.format(art=_article(category), cat=category, a=first, b=second)
            specs.append(PromptSpec(text, checker))
        return specs

    @staticmethod
    def _stated(response: str, option: str, category: str) -> bool:
        """Whether ``response`` says "<option> is a <category>" (also "are", "is the", "is a type of")."""
        body = r"\s+".join(re.escape(part) for part in fold(category).split())
        pattern = (
            rf"(?<![a-z0-9]){re.escape(fold(option))}(?:s|es)?\s+(?:is|are)\s+(?:(?:a|an|the)\s+)?"
            rf"(?:(?:type|kind)\s+of\s+(?:a\s+|an\s+)?)?{body}"
        )
        return re.search(pattern, fold(response)) is not None

    def check(self, checker: Checker, response: str) -> bool:
        right, wrong = checker["answer"], checker["other"]
        has_right, has_wrong = contains_word(response, right, plural=True), contains_word(response, wrong, plural=True)
        if has_right and has_wrong:
            category = checker["category"]
            return self._stated(response, right, category) and not self._stated(response, wrong, category)
        return has_right

    def reference(self, checker: Checker) -> str:
        return f"The {checker['category']} is {checker['answer']}."

    def variants(self, checker: Checker, rng: random.Random) -> list[Variant]:
        category, right, wrong = checker["category"], checker["answer"], checker["other"]
        return [
            Variant(right, True),
            Variant(f"{_capitalise(right)}.", True),
            Variant(f"The {category} is {right}.", True),
            Variant(f"The answer is {right}.", True),
            Variant(wrong, False),
            Variant(f"The {category} is {wrong}.", False),
            Variant(f"The answer is {wrong}.", False),
            Variant(f"Both {right} and {wrong}.", False),
        ]


# country -> (accepted names of the capital, cities often mistaken for it)
CAPITALS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "France": (("Paris",), ("Lyon", "Marseille")),
    "Germany": (("Berlin",), ("Munich", "Frankfurt")),
    "Italy": (("Rome",), ("Milan", "Venice")),
    "Spain": (("Madrid",), ("Barcelona", "Seville")),
    "Portugal": (("Lisbon",), ("Porto",)),
    "the United Kingdom": (("London",), ("Manchester", "Edinburgh")),
    "Ireland": (("Dublin",), ("Cork", "Belfast")),
    "the Netherlands": (("Amsterdam",), ("Rotterdam",)),
    "Belgium": (("Brussels",), ("Antwerp",)),
    "Austria": (("Vienna",), ("Salzburg",)),
    "Switzerland": (("Bern", "Berne"), ("Zurich", "Geneva")),
    "Poland": (("Warsaw",), ("Krakow",)),
    "the Czech Republic": (("Prague",), ("Brno",)),
    "Hungary": (("Budapest",), ("Debrecen",)),
    "Greece": (("Athens",), ("Thessaloniki",)),
    "Sweden": (("Stockholm",), ("Gothenburg",)),
    "Norway": (("Oslo",), ("Bergen",)),
    "Denmark": (("Copenhagen",), ("Aarhus",)),
    "Finland": (("Helsinki",), ("Turku",)),
    "Iceland": (("Reykjavik",), ("Akureyri",)),
    "Russia": (("Moscow",), ("Saint Petersburg",)),
    "Ukraine": (("Kyiv", "Kiev"), ("Kharkiv", "Odesa")),
    "Romania": (("Bucharest",), ("Cluj",)),
    "Bulgaria": (("Sofia",), ("Varna",)),
    "Serbia": (("Belgrade",), ("Novi Sad",)),
    "Croatia": (("Zagreb",), ("Split",)),
    "Turkey": (("Ankara",), ("Istanbul",)),
    "Egypt": (("Cairo",), ("Alexandria",)),
    "Morocco": (("Rabat",), ("Casablanca", "Marrakesh")),
    "Kenya": (("Nairobi",), ("Mombasa",)),
    "Nigeria": (("Abuja",), ("Lagos",)),
    "Ethiopia": (("Addis Ababa",), ("Gondar",)),
    "Ghana": (("Accra",), ("Kumasi",)),
    "Algeria": (("Algiers",), ("Oran",)),
    "Tunisia": (("Tunis",), ("Sfax",)),
    "Senegal": (("Dakar",), ("Touba",)),
    "Uganda": (("Kampala",), ("Entebbe",)),
    "Libya": (("Tripoli",), ("Benghazi",)),
    "Sudan": (("Khartoum",), ("Omdurman",)),
    "Zimbabwe": (("Harare",), ("Bulawayo",)),
    "Zambia": (("Lusaka",), ("Ndola",)),
    "Angola": (("Luanda",), ("Huambo",)),
    "Japan": (("Tokyo",), ("Kyoto", "Osaka")),
    "China": (("Beijing",), ("Shanghai", "Hong Kong")),
    "South Korea": (("Seoul",), ("Busan",)),
    "North Korea": (("Pyongyang",), ("Hamhung",)),
    "India": (("New Delhi", "Delhi"), ("Mumbai", "Kolkata")),
    "Pakistan": (("Islamabad",), ("Karachi", "Lahore")),
    "Bangladesh": (("Dhaka",), ("Chittagong",)),
    "Thailand": (("Bangkok",), ("Chiang Mai",)),
    "Vietnam": (("Hanoi",), ("Ho Chi Minh City", "Saigon")),
    "Indonesia": (("Jakarta",), ("Bali", "Surabaya")),
    "the Philippines": (("Manila",), ("Cebu",)),
    "Malaysia": (("Kuala Lumpur",), ("Penang",)),
    "Iran": (("Tehran",), ("Isfahan",)),
    "Iraq": (("Baghdad",), ("Basra",)),
    "Saudi Arabia": (("Riyadh",), ("Jeddah", "Mecca")),
    "Syria": (("Damascus",), ("Aleppo",)),
    "Lebanon": (("Beirut",), ("Tripoli",)),
    "Jordan": (("Amman",), ("Petra",)),
    "Afghanistan": (("Kabul",), ("Kandahar",)),
    "Nepal": (("Kathmandu",), ("Pokhara",)),
    "Mongolia": (("Ulaanbaatar", "Ulan Bator"), ("Erdenet",)),
    "Qatar": (("Doha",), ("Dubai",)),
    "Australia": (("Canberra",), ("Sydney", "Melbourne")),
    "New Zealand": (("Wellington",), ("Auckland",)),
    "Canada": (("Ottawa",), ("Toronto", "Vancouver")),
    "the United States": (("Washington",), ("New York",)),
    "Mexico": (("Mexico City",), ("Guadalajara", "Cancun")),
    "Cuba": (("Havana",), ("Santiago de Cuba",)),
    "Jamaica": (("Kingston",), ("Montego Bay",)),
    "Brazil": (("Brasilia",), ("Rio de Janeiro", "Sao Paulo")),
    "Argentina": (("Buenos Aires",), ("Cordoba",)),
    "Chile": (("Santiago",), ("Valparaiso",)),
    "Peru": (("Lima",), ("Cusco",)),
    "Colombia": (("Bogota",), ("Medellin",)),
    "Venezuela": (("Caracas",), ("Maracaibo",)),
    "Ecuador": (("Quito",), ("Guayaquil",)),
    "Uruguay": (("Montevideo",), ("Punta del Este",)),
    "Paraguay": (("Asuncion",), ("Ciudad del Este",)),
    "Estonia": (("Tallinn",), ("Tartu",)),
    "Latvia": (("Riga",), ("Daugavpils",)),
    "Lithuania": (("Vilnius",), ("Kaunas",)),
    "Slovakia": (("Bratislava",), ("Kosice",)),
    "Slovenia": (("Ljubljana",), ("Maribor",)),
    "Belarus": (("Minsk",), ("Gomel",)),
    "Armenia": (("Yerevan",), ("Gyumri",)),
    "Azerbaijan": (("Baku",), ("Ganja",)),
    "Cambodia": (("Phnom Penh",), ("Siem Reap",)),
}


class Capital(TaskFamily):
    """The capital of a country.

    Rule: one of the accepted names of the capital appears (accent-insensitive: "Brasília" = "Brasilia")
    and none of the checker's ``wrong`` cities does (the cities often mistaken for it, e.g. Sydney for
    Australia, plus two other capitals), so "Sydney, not Canberra" is wrong.
    """

    name = "capital"
    description = "capital of a well-known country"
    templates = (
        "What is the capital of {c}?",
        "Which city is the capital of {c}?",
        "Name the capital city of {c}.",
    )

    def groups(self) -> list[Hashable]:
        return list(CAPITALS)

    def prompts(self, group: Hashable) -> list[PromptSpec]:
        country = str(group)
        accepted, confusions = CAPITALS[country]
        # two other capitals as extra distractors, chosen from the country name so every phrasing agrees
        rng = random.Random(f"capital-distractors:{country}")
        others = [names[0] for name, (names, _) in CAPITALS.items() if name != country]
        wrong = list(confusions) + rng.sample(others, 2)
        checker = {
            "family": self.name,
            "country": country,
            "answer": accepted[0],
            "accept": list(accepted),
            "wrong": wrong,
        }
        return [PromptSpec(template.format(c=country), checker) for template in self.templates]

    def check(self, checker: Checker, response: str) -> bool:
        if not any(contains_word(response, name) for name in checker["accept"]):
            return False
        return not any(contains_word(response, city) for city in checker["wrong"])

    def reference(self, checker: Checker) -> str:
        country = checker["country"]
        return f"The capital of {country} is {checker['answer']}."

    def variants(self, checker: Checker, rng: random.Random) -> list[Variant]:
        country, answer, wrong = checker["country"], checker["answer"], checker["wrong"]
        confusion, other_capital = wrong[0], rng.choice(wrong[-2:])
        return [
            Variant(answer, True),
            Variant(f"{answer}.", True),
            Variant(f"The capital of {country} is {answer}.", True),
            Variant(confusion, False),
            Variant(f"The capital of {country} is {confusion}.", False),
            Variant(f"The capital of {country} is {other_capital}.", False),
            Variant(f"{other_capital}.", False),
        ]


# word -> accepted opposites
OPPOSITES: dict[str, tuple[str, ...]] = {
    "hot": ("cold",),
    "big": ("small", "little", "tiny"),
    "happy": ("sad", "unhappy"),
    "fast": ("slow",),
    "up": ("down",),
    "day": ("night",),
    "old": ("new", "young"),
    "tall": ("short",),
    "open": ("closed", "shut"),
    "early": ("late",),
    "easy": ("hard", "difficult"),
    "full": ("empty",),
    "wet": ("dry",),
    "high": ("low",),
    "good": ("bad", "evil"),
    "strong": ("weak",),
    "rich": ("poor",),
    "loud": ("quiet", "soft", "silent"),
    "thick": ("thin",),
    "long": ("short",),
    "clean": ("dirty",),
    "young": ("old",),
    "love": ("hate",),
    "win": ("lose",),
    "push": ("pull",),
    "buy": ("sell",),
    "give": ("take", "receive"),
    "start": ("finish", "end", "stop"),
    "inside": ("outside",),
    "above": ("below", "beneath", "under"),
    "left": ("right",),
    "north": ("south",),
    "east": ("west",),
    "front": ("back", "rear", "behind"),
    "true": ("false",),
    "always": ("never",),
    "friend": ("enemy", "foe"),
    "cheap": ("expensive",),
    "deep": ("shallow",),
    "wide": ("narrow",),
    "sharp": ("dull", "blunt"),
    "sweet": ("sour", "bitter"),
    "smooth": ("rough",),
    "alive": ("dead",),
    "arrive": ("leave", "depart"),
    "accept": ("reject", "refuse"),
    "remember": ("forget",),
    "near": ("far", "distant"),
    "first": ("last",),
    "heavy": ("light",),
    "laugh": ("cry",),
    "winter": ("summer",),
    "war": ("peace",),
    "asleep": ("awake",),
    "black": ("white",),
    "king": ("queen",),
    "boy": ("girl",),
    "man": ("woman",),
    "success": ("failure",),
    "increase": ("decrease",),
    "maximum": ("minimum",),
    "entrance": ("exit",),
    "import": ("export",),
    "positive": ("negative",),
    "visible": ("invisible",),
    "polite": ("rude", "impolite"),
    "kind": ("cruel", "unkind", "mean"),
    "patient": ("impatient",),
    "beautiful": ("ugly",),
    "top": ("bottom",),
    "before": ("after",),
    "sunrise": ("sunset",),
    "floor": ("ceiling",),
    "teacher": ("student", "pupil"),
    "question": ("answer",),
    "brave": ("cowardly", "afraid", "scared", "coward"),
    "safe": ("dangerous", "unsafe"),
    "lazy": ("hardworking", "diligent", "active"),
    "ancient": ("modern", "new"),
    "dark": ("light", "bright"),
    "soft": ("hard", "loud"),
    "empty": ("full",),
    "wrong": ("right", "correct"),
    "quiet": ("loud", "noisy"),
    "slow": ("fast", "quick"),
    "cold": ("hot", "warm"),
    "sad": ("happy", "glad"),
}


class Opposite(TaskFamily):
    """The opposite of a common word.

    Rule: one of the accepted opposites (``accept``) appears as a whole word ("The opposite of hot is
    cold." passes; "... is warm" or "... is hot" does not).
    """

    name = "opposite"
    description = "opposite of a common word"
    templates = (
        "What is the opposite of {w}?",
        "What is the opposite of the word '{w}'?",
        "Give the opposite of '{w}'.",
    )

    def groups(self) -> list[Hashable]:
        return list(OPPOSITES)

    def prompts(self, group: Hashable) -> list[PromptSpec]:
        word = str(group)
        accepted = OPPOSITES[word]
        checker = {"family": self.name, "word": word, "answer": accepted[0], "accept": list(accepted)}
        return [PromptSpec(template.format(w=word), checker) for template in self.templates]

    def check(self, checker: Checker, response: str) -> bool:
        return any(contains_word(response, name) for name in checker["accept"])

    def reference(self, checker: Checker) -> str:
        return f"The opposite of {checker['word']} is {checker['answer']}."

    def variants(self, checker: Checker, rng: random.Random) -> list[Variant]:
        word, answer, accepted = checker["word"], checker["answer"], set(checker["accept"])
        unrelated = rng.choice(
            [
                other
                for other, others in OPPOSITES.items()
                if other != word and other not in accepted and word not in others
            ]
        )
        return [
            Variant(answer, True),
            Variant(f"{_capitalise(answer)}.", True),
            Variant(f"The opposite of {word} is {answer}.", True),
            Variant(word, False),
            Variant(f"The opposite of {word} is {word}.", False),
            Variant(f"The opposite of {word} is {unrelated}.", False),
            Variant(f"{_capitalise(unrelated)}.", False),
        ]


class RepeatWord(TaskFamily):
    """Repeat a word.

    Rule: the word appears as a whole word (case-insensitive); a misspelling ("bananna") or another word
    does not count.
    """

    name = "repeat"
    description = "repeat a word"
    templates = (
        "Repeat the word '{w}'.",
        "Say the word '{w}' back to me.",
        "Please repeat this word: {w}.",
    )

    def groups(self) -> list[Hashable]:
        return list(WORDS)

    def prompts(self, group: Hashable) -> list[PromptSpec]:
        checker = {"family": self.name, "answer": str(group)}
        return [PromptSpec(template.format(w=group), checker) for template in self.templates]

    def check(self, checker: Checker, response: str) -> bool:
        return contains_word(response, checker["answer"])

    def reference(self, checker: Checker) -> str:
        return f"{_capitalise(checker['answer'])}."

    def variants(self, checker: Checker, rng: random.Random) -> list[Variant]:
        word = checker["answer"]
        misspelt = _swap_adjacent(word, rng)
        dropped = word[: len(word) // 2] + word[len(word) // 2 + 1 :]
        other = rng.choice([candidate for candidate in WORDS if candidate != word and word not in candidate])
        variants = [
            Variant(word, True),
            Variant(f"{_capitalise(word)}.", True),
            Variant(f"Sure: {word}.", True),
            Variant(f"{word} {word}", True),
            Variant(f"{_capitalise(other)}.", False),
            Variant(f"Sure: {dropped}.", False),
            Variant("I'm sorry, I cannot repeat that word.", False),
        ]
        if misspelt != word:
            variants.append(Variant(f"{_capitalise(misspelt)}.", False))
        return variants


#: The families of the default mix, in a fixed order: the ones the embedded model fails first, then the
#: ones it gets partly right, then the easy ones (the per-family success rates are in ``docs/data.md``).
FAMILIES: dict[str, TaskFamily] = {
    family.name: family
    for family in (
        TwoDigitAddition(),
        LargerNumber(),
        Capitalise(),
        NextWeekday(),
        CountLetters(),
        SortThree(),
        Parity(),
        OneDigitAddition(),
        Category(),
        Capital(),
        Opposite(),
        RepeatWord(),
    )
}


def check_response(checker: Checker, response: str) -> bool:
    """Whether ``response`` correctly answers the prompt that ``checker`` belongs to.

    Args:
        checker: the ``checker`` dict stored with every built-in prompt (``metadata.checker`` of a pair,
            ``checker`` of a test prompt); its ``family`` key selects the rule.
        response: a generated answer, verbose or not.

    Returns:
        ``True`` when the family's rule accepts the answer (see each family's docstring).

    Raises:
        KeyError: for an unknown family.
    """
    return FAMILIES[checker["family"]].check(checker, response)


def family_of(checker: Checker) -> TaskFamily:
    """The :class:`TaskFamily` a checker belongs to."""
    return FAMILIES[checker["family"]]


def labelled_variants(checker: Checker, rng: random.Random) -> list[tuple[Variant, bool]]:
    """The family's variants for ``checker``, each with the label the checker gives it."""
    return [(variant, check_response(checker, variant.text)) for variant in family_of(checker).variants(checker, rng)]


def all_family_names(names: Sequence[str] | None = None) -> list[str]:
    """Validated family names: ``names`` or, by default, every family of :data:`FAMILIES`."""
    if names is None:
        return list(FAMILIES)
    unknown = [name for name in names if name not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown task families {unknown}; known: {list(FAMILIES)}")
    return list(names)
