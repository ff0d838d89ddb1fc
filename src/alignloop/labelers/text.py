"""Cheap text features behind the gold utility: words, stems, an instruction's key words, repetition.

Everything here is plain Python over lower-cased word tokens, so the gold judge can score
thousands of PPO samples per second. The key-word extractor is deliberately simple (content
words minus a stop-word list, crude suffix stripping): the gold utility only needs a signal
that grows when an answer talks about what the instruction asked about.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")

#: Function words plus the verbs and nouns instructions are phrased with ("write", "explain",
#: "question"): an answer is not expected to repeat them, so they are not key words.
STOP_WORDS: frozenset[str] = frozenset(
    """
    a about above after again against all almost also although always am among an and another any anyone
    anything are aren't around as at be because been before being below between both but by can can't cannot
    could couldn't did didn't do does doesn't doing don't done down during each either else enough even ever
    every few for from further get gets getting give given gives go goes going got had hadn't has hasn't have
    haven't having he he'd he'll he's her here here's hers herself him himself his how how's however i i'd i'll
    i'm i've if in into is isn't it it's its itself just least less let let's like likely made make makes many
    may me might mine more most much must mustn't my myself need needs neither never no nor not now of off often
    on once one only onto or other others otherwise ought our ours ourselves out over own per perhaps please
    quite rather really same say says shall shan't she she'd she'll she's should shouldn't since so some
    someone something such than that that's the their theirs them themselves then there there's these they
    they'd they'll they're they've thing things this those though through thus to too toward towards under
    until up upon us use used using very via was wasn't we we'd we'll we're we've well were weren't what
    what's whatever when when's where where's whether which while who who's whom whose why why's will with
    within without won't would wouldn't yes yet you you'd you'll you're you've your yours yourself yourselves
    answer answers ask asked brief briefly concise create describe description detail detailed details
    example examples explain explanation following generate help write written writing tell list provide
    question questions short sentence sentences simple text word words paragraph paragraphs summarize
    summarise summary classify extract rewrite response respond reply way ways kind sort advice tips idea ideas
    """.split()
)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters and digits, with an inner apostrophe kept: "don't")."""
    return _WORD.findall(text.lower())


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """Crude suffix stripping so "oceans"/"ocean" and "stories"/"story" meet.

    Not Porter; just the few rules that matter for matching an answer's words to an
    instruction's: plural and verb endings, "-ly", a doubled final consonant, final "e"/"y".
    """
    w = word.lower()
    if len(w) <= 3 or not w.isalpha():
        return w
    if w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "i"
    elif w.endswith("sses"):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    for suffix in ("ing", "ed", "ly"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[: -len(suffix)]
            if len(w) >= 4 and w[-1] == w[-2] and w[-1] not in "aeiouls":
                w = w[:-1]
            break
    if len(w) > 3 and w[-1] in "ey":
        w = w[:-1] + ("i" if w[-1] == "y" else "")
    return w


def is_content_word(word: str) -> bool:
    """A word that carries topic: not a stop word, at least 3 letters, not a bare number."""
    return len(word) >= 3 and word not in STOP_WORDS and not word.isdigit()


@lru_cache(maxsize=16384)
def keywords(prompt: str, max_keywords: int = 8) -> tuple[tuple[str, str], ...]:
    """The instruction's key words as ``(stem, surface form)`` pairs, most frequent first.

    Ties in frequency keep the order of first appearance, so the words of the instruction
    (which comes first) outrank those of a long passage pasted after it.
    """
    counts: Counter[str] = Counter()
    first: dict[str, tuple[int, str]] = {}
    for i, w in enumerate(words(prompt)):
        if not is_content_word(w):
            continue
        s = stem(w)
        counts[s] += 1
        first.setdefault(s, (i, w))
    ranked = sorted(counts, key=lambda s: (-counts[s], first[s][0]))
    return tuple((s, first[s][1]) for s in ranked[:max_keywords])


def coverage(prompt: str, completion_words: list[str], max_keywords: int = 8) -> float:
    """Share of the prompt's key words that the completion mentions (after stemming); 1.0 if it has none."""
    keys = keywords(prompt, max_keywords)
    if not keys:
        return 1.0
    present = {stem(w) for w in completion_words}
    return sum(1 for s, _ in keys if s in present) / len(keys)


def distinct_ngram_ratio(tokens: list[str], n: int = 3) -> float:
    """Unique n-grams / all n-grams: 1.0 for text that never repeats itself, near 0 for a loop.

    Texts too short to hold two n-grams count as not repetitive (length is judged elsewhere).
    """
    total = len(tokens) - n + 1
    if total < 2:
        return 1.0
    grams = {tuple(tokens[i : i + n]) for i in range(total)}
    return len(grams) / total
