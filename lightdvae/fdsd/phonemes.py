"""The phoneme side of the DS2-style feature network: phoneme classes from the corpus manifest, CTC decoding and
the phoneme error rate.

Phonemes are espeak-ng ``-x`` mnemonics from the corpus manifest, normalised by :func:`normalize_phoneme`
(stress marks dropped, pauses and modifiers dropped, numbered allophone variants such as ``@2`` merged with their
base ``@``): about 60 classes on the built-in corpus.

CTC: class 0 of the network's output is the blank (:data:`BLANK`); phoneme ``i`` of the inventory is class ``i + 1``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

__all__ = [
    "BLANK",
    "normalize_phoneme",
    "phoneme_sequence",
    "phoneme_inventory",
    "greedy_decode",
    "edit_distance",
    "phoneme_error_rate",
]

BLANK = 0  #: index of the CTC blank in the output layer


def normalize_phoneme(token: str) -> str | None:
    """One espeak-ng ``-x`` token (as in the manifest's ``phoneme_tokens``) -> its class, or None to drop it.

    Stress marks (``'`` primary, ``,`` secondary) are removed; pauses (``_``, ``_:``, ``_!``, ...) and the
    palatalisation modifier ``;`` are dropped; a trailing allophone digit is removed (``@2`` -> ``@``,
    ``aI3`` -> ``aI``) unless the token is only that digit (``3``, the r-coloured schwa, stays).
    """
    t = token.strip().lstrip("',")
    if not t or t.startswith("_") or t == ";":
        return None
    if len(t) > 1 and t[-1].isdigit():
        t = t[:-1]
    return t


def phoneme_sequence(phoneme_tokens: Sequence[Sequence[str]]) -> list[str]:
    """A manifest row's ``phoneme_tokens`` (one list per word) -> the flat list of phoneme classes."""
    out = []
    for word in phoneme_tokens:
        for tok in word:
            p = normalize_phoneme(tok)
            if p is not None:
                out.append(p)
    return out


def phoneme_inventory(rows: Iterable[dict]) -> list[str]:
    """The sorted phoneme classes of manifest ``rows`` (every split: the inventory is a property of the
    corpus's accents, and a class seen only in the test split is then at least predictable in principle)."""
    seen = set()
    for row in rows:
        seen.update(phoneme_sequence(row["phoneme_tokens"]))
    return sorted(seen)


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = BLANK) -> list[list[int]]:
    """Best-path CTC decoding: argmax per frame, merge repeats, drop blanks.

    Args:
        log_probs: ``(B, T, C)`` (log-)probabilities or logits.
        lengths: ``(B,)`` valid frames per utterance.
    Returns:
        B lists of class indices (blank excluded).
    """
    best = log_probs.argmax(-1).cpu()
    out = []
    for b, n in enumerate(lengths.tolist()):
        seq, prev = [], None
        for k in best[b, : int(n)].tolist():
            if k != prev and k != blank:
                seq.append(k)
            prev = k
        out.append(seq)
    return out


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions, each costing 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def phoneme_error_rate(hypotheses: Sequence[Sequence], references: Sequence[Sequence]) -> float:
    """Corpus-level PER: total edit distance over total reference length (nan when there is no reference)."""
    errors = sum(edit_distance(h, r) for h, r in zip(hypotheses, references, strict=True))
    total = sum(len(r) for r in references)
    return errors / total if total else float("nan")
