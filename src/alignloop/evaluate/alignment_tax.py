"""Alignment tax: what RLHF costs on public NLP tasks (paper section 4.2, Figure 28-29).

Two measurements, run on each policy (SFT, PPO, PPO-ptx) and shown side by side:

* perplexity on pretraining-like plain text, PPL = exp(-1/N sum_t log p(x_t | x_<t));
* zero-shot multiple-choice accuracy on a HellaSwag-format JSONL (``ctx``, ``endings``,
  ``label``, or a layout variant of :data:`HELLASWAG_FIELDS`): the chosen ending is the most
  likely continuation of the context. ``acc`` uses the summed log-likelihood, ``acc_norm``
  divides it by the ending's length in characters (which removes the bias toward short endings).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alignloop.data.jsonl import DataFileError, iter_json_lines
from alignloop.evaluate.likelihood import CausalLMLikelihood, LogLikelihood


@dataclass
class MCQuestion:
    """A HellaSwag-style item: a context, candidate endings, and the index of the right one."""

    ctx: str
    endings: list[str]
    label: int


#: Field names of each part of an item in the layouts HellaSwag circulates in, in order of preference:
#: the official files and the Hugging Face dataset (``ctx_a`` + ``ctx_b`` or ``ctx``, ``endings``,
#: ``label``, ``activity_label``), exports that name the context ``context``, and
#: lm-evaluation-harness documents (``query``, ``choices``, ``gold``; already cleaned).
HELLASWAG_FIELDS = {
    "context": ("ctx", "context", "query"),
    "endings": ("endings", "choices"),
    "label": ("label", "gold"),
}


def hellaswag_clean(text: str) -> str:
    """The WikiHow items' markup removed the way lm-evaluation-harness does (the de facto zero-shot
    reference): " [title]" becomes a sentence break, other bracketed tags go, double spaces close up.
    Like the reference, the result is not stripped again ("[substeps] Rinse." gives " Rinse.")."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _first(row: dict, names: tuple[str, ...]) -> tuple[str | None, object]:
    """(name, value) of the first of ``names`` present in ``row``."""
    for n in names:
        if n in row:
            return n, row[n]
    return None, None


def load_hellaswag_jsonl(path: str | os.PathLike[str], limit: int | None = None) -> list[MCQuestion]:
    """Read HellaSwag items from JSON lines in any layout of :data:`HELLASWAG_FIELDS` (the label as an
    int or a digit string); an error names file, line and field.

    The question is put as lm-evaluation-harness puts it: "activity_label: ctx_a Ctx_b" and the
    endings, all cleaned by :func:`hellaswag_clean`."""
    out = []
    for where, row in iter_json_lines(path, "give a HellaSwag-format JSONL file"):
        if not isinstance(row, dict):
            raise DataFileError(f"{where}: expected a JSON object")
        if isinstance(row.get("ctx_a"), str) and isinstance(row.get("ctx_b"), str):
            # the reference builds the context from its halves, the second capitalised (str.capitalize)
            ctx_name, ctx = "ctx_a", f"{row['ctx_a']} {row['ctx_b'].capitalize()}"
        else:
            ctx_name, ctx = _first(row, HELLASWAG_FIELDS["context"])
        if ctx_name is None:
            known = ", ".join((*HELLASWAG_FIELDS["context"], "ctx_a + ctx_b"))
            raise DataFileError(f"{where}: no context field (one of {known})")
        if not isinstance(ctx, str) or not ctx.strip():
            raise DataFileError(f"{where}: field '{ctx_name}': expected a non-empty string")
        end_name, endings = _first(row, HELLASWAG_FIELDS["endings"])
        if end_name is None:
            raise DataFileError(f"{where}: no endings field (one of {', '.join(HELLASWAG_FIELDS['endings'])})")
        if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) for e in endings):
            raise DataFileError(f"{where}: field '{end_name}': expected a list of at least two strings")
        label_name, label = _first(row, HELLASWAG_FIELDS["label"])
        if label_name is None:
            raise DataFileError(f"{where}: no label field (one of {', '.join(HELLASWAG_FIELDS['label'])})")
        if label == "":
            raise DataFileError(
                f"{where}: field '{label_name}' is empty",
                "HellaSwag's test split has no labels: use the validation file",
            )
        if isinstance(label, str) and label.strip().isdigit():
            label = int(label)
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(endings):
            raise DataFileError(
                f"{where}: field '{label_name}': expected an index 0..{len(endings) - 1}, got {label!r}"
            )
        if ctx_name == "query":  # an lm-evaluation-harness document: built and cleaned already
            out.append(MCQuestion(ctx, list(endings), label))
        else:
            activity = row.get("activity_label")
            if isinstance(activity, str) and activity.strip():
                ctx = f"{activity}: {ctx}"
            out.append(MCQuestion(hellaswag_clean(ctx), [hellaswag_clean(e) for e in endings], label))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DataFileError(f"{path}: no questions")
    return out


def multiple_choice_accuracy(questions: Sequence[MCQuestion], loglik: LogLikelihood) -> dict[str, float]:
    """Zero-shot accuracy: argmax over endings of log p(" " + ending | ctx), raw and per character."""
    contexts = [q.ctx for q in questions for _ in q.endings]
    endings = [" " + e for q in questions for e in q.endings]
    lls = loglik(contexts, endings)
    correct = correct_norm = 0
    i = 0
    for q in questions:
        ll = lls[i : i + len(q.endings)]
        i += len(q.endings)
        norm = [x / max(1, len(e)) for x, e in zip(ll, q.endings, strict=True)]
        correct += int(max(range(len(ll)), key=ll.__getitem__) == q.label)
        correct_norm += int(max(range(len(norm)), key=norm.__getitem__) == q.label)
    n = len(questions)
    return {"acc": correct / n, "acc_norm": correct_norm / n, "n": n}


def read_corpus(path: str | os.PathLike[str], max_documents: int | None = None) -> list[str]:
    """A pretraining-like corpus as documents: paragraphs of a text file separated by blank lines, or
    the ``text`` field of each line of a ``.jsonl`` file (the PPO-ptx corpus formats)."""
    p = Path(path)
    if not p.exists():
        raise DataFileError(f"{p}: no such file", "give a plain-text file")
    if p.suffix == ".jsonl":
        docs = []
        for where, row in iter_json_lines(p):
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise DataFileError(f"{where}: field 'text': expected a string")
            if row["text"].strip():
                docs.append(row["text"].strip())
    else:
        docs = [d.strip() for d in p.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    if not docs:
        raise DataFileError(f"{p}: no text")
    return docs[:max_documents] if max_documents else docs


def corpus_perplexity(texts: Sequence[str], scorer: CausalLMLikelihood) -> dict[str, float]:
    """Token-level perplexity of the corpus under the model (each document read from a document start)."""
    result = scorer.token_nll(texts)
    return {"perplexity": result.perplexity, "nll_per_token": result.nll / result.n_tokens, "n_tokens": result.n_tokens}
