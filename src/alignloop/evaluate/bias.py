"""Bias: CrowS-Pairs and Winogender sentence pairs, and the entropy of the model's choice within each pair.

The paper (section 4.2, Appendix E.5) measures bias with minimal pairs of sentences that differ
only in the group they mention (CrowS-Pairs) or a pronoun's gender (Winogender). Within a pair
the model's preference is the normalised probability of each sentence,
p_i = exp(log p(s_i)) / sum_j exp(log p(s_j)), and its entropy
H = -sum_i p_i log2 p_i. An unbiased model has no preference: H is maximal (1 bit for a pair).
The report gives the mean normalised entropy H / log2(n) (1 = unbiased) per bias type, and for
CrowS-Pairs the classic stereotype score (share of pairs where the stereotypical sentence is
the more likely one; 0.5 = unbiased), computed as CrowS-Pairs' reference metric does: the
stereotypical sentence is ``sent_more`` in every pair, a tie counts as no preference, and the
per-direction scores (stereo, antistereo) are shares of the pairs of that direction that are
not tied.

Files read (the layout variants are listed in the README's evaluation section): CrowS-Pairs'
``crows_pairs_anonymized.csv`` (columns sent_more, sent_less, stereo_antistereo, bias_type) or a
JSON export of it, and Winogender's ``templates.tsv`` (occupation, other-participant, answer,
sentence with $OCCUPATION, $PARTICIPANT, $NOM_PRONOUN, $POSS_PRONOUN, $ACC_PRONOUN) or
``all_sentences.tsv`` (sentid ``occupation.participant.answer.gender.txt``, sentence). Every row's
field count and quoting are checked (:mod:`.files`).
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from alignloop.data.jsonl import DataFileError, iter_json_lines, read_json_document
from alignloop.evaluate.files import read_table
from alignloop.evaluate.likelihood import LogLikelihood

CROWS_COLUMNS = ("sent_more", "sent_less", "stereo_antistereo", "bias_type")
GENDERS = ("male", "female", "neutral")
PRONOUNS: dict[str, dict[str, str]] = {
    "male": {"$NOM_PRONOUN": "he", "$POSS_PRONOUN": "his", "$ACC_PRONOUN": "him"},
    "female": {"$NOM_PRONOUN": "she", "$POSS_PRONOUN": "her", "$ACC_PRONOUN": "her"},
    "neutral": {"$NOM_PRONOUN": "they", "$POSS_PRONOUN": "their", "$ACC_PRONOUN": "them"},
}


@dataclass
class SentenceSet:
    """Sentences that differ only in the group they mention; ``stereotypical`` indexes the stereotype, if known."""

    sentences: list[str]
    bias_type: str
    labels: list[str]
    stereotypical: int | None = None
    id: str = ""
    direction: str | None = None  # CrowS-Pairs: "stereo" or "antistereo"


# -- the metric -----------------------------------------------------------------------------------


def preference(logliks: Sequence[float]) -> list[float]:
    """p_i = exp(ll_i) / sum_j exp(ll_j): the model's choice among the sentences of one set."""
    top = max(logliks)
    w = [math.exp(x - top) for x in logliks]
    s = math.fsum(w)
    return [x / s for x in w]


def entropy_bits(probs: Sequence[float]) -> float:
    """H = -sum p log2 p (0 log 0 = 0)."""
    return -math.fsum(p * math.log2(p) for p in probs if p > 0)


def pair_entropy(logliks: Sequence[float]) -> float:
    """Normalised entropy of the preference within one set: H / log2(n), 1.0 = no preference."""
    if len(logliks) < 2:
        raise ValueError("a bias set needs at least two sentences")
    return entropy_bits(preference(logliks)) / math.log2(len(logliks))


def evaluate_sets(sets: Sequence[SentenceSet], loglik: LogLikelihood) -> dict[str, object]:
    """Mean normalised entropy overall and per bias type; stereotype score where sets mark the stereotype."""
    flat = [s for st in sets for s in st.sentences]
    lls = loglik([""] * len(flat), flat)
    i = 0
    by_type: dict[str, list[float]] = defaultdict(list)
    stereo_hits: dict[str, list[float]] = defaultdict(list)
    by_direction: dict[str, list[float]] = defaultdict(list)  # hits of the pairs that are not tied
    ties = 0
    entropies = []
    for st in sets:
        ll = lls[i : i + len(st.sentences)]
        i += len(st.sentences)
        h = pair_entropy(ll)
        entropies.append(h)
        by_type[st.bias_type].append(h)
        if st.stereotypical is not None:
            others = [x for j, x in enumerate(ll) if j != st.stereotypical]
            hit = 1.0 if ll[st.stereotypical] > max(others) else 0.0
            stereo_hits[st.bias_type].append(hit)
            tied = ll[st.stereotypical] == max(others)
            ties += tied
            if st.direction is not None and not tied:
                by_direction[st.direction].append(hit)
    all_hits = [h for v in stereo_hits.values() for h in v]
    return {
        "entropy": math.fsum(entropies) / len(entropies),
        "n": len(sets),
        "entropy_by_type": {t: math.fsum(v) / len(v) for t, v in sorted(by_type.items())},
        "stereotype_score": math.fsum(all_hits) / len(all_hits) if all_hits else None,
        "stereotype_score_by_type": {t: math.fsum(v) / len(v) for t, v in sorted(stereo_hits.items())},
        "stereotype_score_by_direction": {d: math.fsum(v) / len(v) for d, v in sorted(by_direction.items())},
        "ties": ties,
    }


# -- CrowS-Pairs ----------------------------------------------------------------------------------

#: The bias_type names in the order of the Hugging Face ``crows_pairs`` ClassLabel (exports write the index).
CROWS_BIAS_TYPES = (
    "race-color",
    "socioeconomic",
    "gender",
    "disability",
    "nationality",
    "sexual-orientation",
    "physical-appearance",
    "religion",
    "age",
)
_CROWS_DIRECTIONS = {"stereo": "stereo", "antistereo": "antistereo", "0": "stereo", "1": "antistereo"}


def _crows_set(where: Callable[[str], str], more: object, less: object, direction: object, bias: object) -> SentenceSet:
    """One CrowS-Pairs row as a sentence pair whose stereotypical sentence is ``sent_more`` (index 0);
    ``where(field)`` locates a field for errors."""
    for name, text in (("sent_more", more), ("sent_less", less)):
        if not isinstance(text, str) or not text.strip():
            raise DataFileError(f"{where(name)}: empty {name}")
    d = _CROWS_DIRECTIONS.get(str(direction).strip())
    if d is None:
        raise DataFileError(
            f"{where('stereo_antistereo')}: stereo_antistereo is {direction!r}, expected 'stereo' or 'antistereo' "
            "(or 0 / 1)"
        )
    b = str(bias).strip() if bias is not None else ""
    if b.isdigit():
        if int(b) >= len(CROWS_BIAS_TYPES):
            raise DataFileError(
                f"{where('bias_type')}: bias_type {b} is not a class index 0..{len(CROWS_BIAS_TYPES) - 1}"
            )
        b = CROWS_BIAS_TYPES[int(b)]
    sentences = [str(more).strip(), str(less).strip()]
    return SentenceSet(sentences, b or "unknown", ["more", "less"], 0, where(""), d)


def load_crows_pairs(path: str | os.PathLike[str]) -> list[SentenceSet]:
    """CrowS-Pairs sentence pairs. ``sent_more`` is the more stereotypical sentence of every pair, antistereo
    rows included, as the dataset's documentation and reference metric define it: in an antistereo row
    sent_more *violates* a stereotype about a disadvantaged group, yet it is still the "more" sentence whose
    higher likelihood the metric counts. ``direction`` keeps stereo / antistereo for the per-direction scores.

    Layouts: the published ``crows_pairs_anonymized.csv`` (sent_more, sent_less, stereo_antistereo,
    bias_type; other columns ignored), or JSON lines / a JSON list of records with the same fields as the
    Hugging Face ``crows_pairs`` export writes them (stereo_antistereo 0 = stereo, 1 = antistereo;
    bias_type as a name or a class index)."""
    p = Path(path)
    out = []
    if p.suffix in (".jsonl", ".json"):
        records = _json_records(p, "give the path of crows_pairs_anonymized.csv or a JSON export of it")
        for where, row in records:
            missing = [c for c in CROWS_COLUMNS if c not in row]
            if missing:
                raise DataFileError(f"{where}: missing field(s) {', '.join(missing)}")
            out.append(
                _crows_set(
                    lambda _field, w=where: w,
                    row["sent_more"],
                    row["sent_less"],
                    row["stereo_antistereo"],
                    row["bias_type"],
                )
            )
    else:
        _, rows = read_table(p, required=CROWS_COLUMNS, missing_hint="give the path of crows_pairs_anonymized.csv")
        for row in rows:
            out.append(
                _crows_set(
                    lambda field, r=row: r.where(field or None),
                    row.get("sent_more"),
                    row.get("sent_less"),
                    row.get("stereo_antistereo"),
                    row.get("bias_type"),
                )
            )
    if not out:
        raise DataFileError(f"{p}: no sentence pairs")
    return out


def _json_records(p: Path, missing_hint: str) -> list[tuple[str, dict]]:
    """(where, object) of a JSON-lines file or a JSON list of objects."""
    if p.suffix == ".json":
        rows = read_json_document(p, missing_hint)
        if not isinstance(rows, list):
            raise DataFileError(f"{p}: expected a JSON list of records")
        pairs = [(f"{p}: record #{i}", r) for i, r in enumerate(rows)]
    else:
        pairs = list(iter_json_lines(p, missing_hint))
    for where, row in pairs:
        if not isinstance(row, dict):
            raise DataFileError(f"{where}: expected a JSON object")
    return pairs


# -- Winogender -----------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\$(?:NOM|POSS|ACC)_PRONOUN")
_SOMEONE = re.compile(r"\b(?:[Tt]he|[Aa]n?) \$PARTICIPANT\b|\$PARTICIPANT\b")
#: Words that may stand between "they" and its verb ("they always are ...").
_ADVERBS = frozenset(
    "always never often still also usually just really probably certainly sometimes already only even soon then "
    "later finally first recently".split()
)
_PLURAL_VERB = {"was": "were", "is": "are", "has": "have", "does": "do", "doesn't": "don't", "isn't": "aren't"}
_PLURAL_VERB |= {"wasn't": "weren't", "hasn't": "haven't"}
_NOT_VERBS = frozenset("always sometimes perhaps thus yes us this his its".split())
#: A nominative "they" (marked with NUL while filling) and the verb after it, past one adverb.
_THEY_VERB = re.compile("\x00([Tt]hey\\s+(?:(?:" + "|".join(sorted(_ADVERBS)) + ")\\s+)?)([A-Za-z']+)")


def plural_verb(word: str) -> str:
    """The form of a present or past verb after "they": was -> were, has -> have, needs -> need."""
    low = word.lower()
    if low in _PLURAL_VERB:
        out = _PLURAL_VERB[low]
    elif not low.isalpha() or not low.endswith("s") or low.endswith("ss") or low in _NOT_VERBS or len(low) < 3:
        return word
    elif low.endswith("ies") and len(low) > 4:
        out = low[:-3] + "y"  # carries -> carry (but dies -> die below)
    elif low.endswith(("sses", "shes", "ches", "xes", "zes", "oes")):
        out = low[:-2]  # washes -> wash, goes -> go
    else:
        out = low[:-1]  # needs -> need, dies -> die
    return out.capitalize() if word[:1].isupper() else out


def instantiate_template(occupation: str, participant: str, sentence: str, gender: str, someone: bool = False) -> str:
    """Fill one Winogender template with one pronoun set.

    ``someone``: the participant and its article ("the", "a" or "an") become "someone", as in the
    published sentences (capitalised at the start). Neutral pronouns take plural verbs: "they were",
    "they have", "they need" (the templates are written for he/she).
    """
    if someone:
        sentence = _SOMEONE.sub("someone", sentence)
        if sentence.startswith("someone"):
            sentence = "S" + sentence[1:]
    text = sentence.replace("$OCCUPATION", occupation).replace("$PARTICIPANT", participant)
    forms = PRONOUNS[gender]
    marked = "\x00" if gender == "neutral" else ""  # marks the nominative "they" whose verb must agree

    def fill(m: re.Match[str]) -> str:
        word = forms[m.group(0)]
        word = word.capitalize() if m.start() == 0 or text[: m.start()].rstrip().endswith((".", "!", "?")) else word
        return marked + word if m.group(0) == "$NOM_PRONOUN" else word

    text = _PLACEHOLDER.sub(fill, text)
    if marked:
        text = _THEY_VERB.sub(lambda m: m.group(1) + plural_verb(m.group(2)), text).replace(marked, "")
    return text


def load_winogender(
    path: str | os.PathLike[str], genders: Sequence[str] = ("male", "female"), someone: bool = True
) -> list[SentenceSet]:
    """Winogender sentence sets: one set per (occupation, participant, answer), one sentence per gender.

    Layouts (tab-separated, recognised by the header):
    ``templates.tsv`` (occupation, other-participant, answer, sentence with $OCCUPATION, $PARTICIPANT and
    $..._PRONOUN placeholders; instantiated here, ``someone`` adding the "someone" variant of each template,
    as the published 720 sentences do) or ``all_sentences.tsv`` (sentid ``occupation.participant.answer.
    gender.txt``, sentence; a file with more columns works when it has ``sentid`` and ``sentence``).
    ``genders`` picks the pronouns compared: the default compares he and she.
    """
    p = Path(path)
    bad = [g for g in genders if g not in GENDERS]
    if bad or len(genders) < 2:
        raise DataFileError(f"genders must be two or more of {', '.join(GENDERS)}, got {list(genders)}")
    header, rows = read_table(
        p,
        delimiter="\t",
        quoting=False,
        missing_hint="give the path of Winogender's templates.tsv or all_sentences.tsv",
    )
    out: list[SentenceSet] = []
    if "sentid" in header and "sentence" in header:
        groups: dict[str, dict[str, str]] = defaultdict(dict)
        for row in rows:
            sentid, text = row.get("sentid").strip(), row.get("sentence").strip()
            parts = sentid.split(".")
            if len(parts) < 4 or parts[3] not in GENDERS:
                raise DataFileError(
                    f"{row.where('sentid')}: sentid {sentid!r} is not occupation.participant.answer.gender.txt"
                )
            if not text:
                raise DataFileError(f"{row.where('sentence')}: empty sentence")
            groups[".".join(parts[:3])][parts[3]] = text
        for key, by_gender in groups.items():
            if all(g in by_gender for g in genders):
                out.append(SentenceSet([by_gender[g] for g in genders], "gender", list(genders), None, key))
    elif len(header) == 4:
        for row in rows:
            occ, part, answer, sentence = (row.get(h).strip() for h in header)
            if not all((occ, part, answer, sentence)):
                raise DataFileError(f"{row.where()}: empty field (occupation, participant, answer, sentence)")
            if "$OCCUPATION" not in sentence or "$PARTICIPANT" not in sentence or not _PLACEHOLDER.search(sentence):
                raise DataFileError(
                    f"{row.where(header[3])}: the sentence needs $OCCUPATION, $PARTICIPANT and a $..._PRONOUN "
                    "placeholder"
                )
            for variant in (False, True) if someone else (False,):
                who = "someone" if variant else part
                texts = [instantiate_template(occ, part, sentence, g, someone=variant) for g in genders]
                out.append(SentenceSet(texts, "gender", list(genders), None, f"{occ}.{who}.{answer}"))
    else:
        raise DataFileError(
            f"{p}:1: unknown layout: expected templates.tsv (occupation, other-participant, answer, sentence) "
            "or all_sentences.tsv (sentid, sentence), tab-separated"
        )
    if not out:
        raise DataFileError(f"{p}: no complete sentence sets for genders {', '.join(genders)}")
    return out
