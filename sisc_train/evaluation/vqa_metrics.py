"""VQA accuracy: the soft score of the VQA benchmark, answer normalisation and the result file format.

An answer's score for one question is min(#annotators who gave it / 3, 1): three or more of the (ten) humans
agreeing means full credit. `vqa_score(..., official=True)` uses the official evaluation's refinement: the mean of
that score over the 10 leave-one-annotator-out subsets of 9 (min(#matches among the other 9 / 3, 1)).

Answers are compared after `normalize_answer`: lower case, surrounding whitespace and punctuation removed, number
words zero..ten written as digits, articles (a, an, the) dropped, whitespace collapsed.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

NUMBER_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
ARTICLES = {"a", "an", "the"}
_PUNCTUATION = re.compile(r"[^\w\s.]|(?<!\d)\.|\.(?!\d)")  # keep decimal points of numbers


def normalize_answer(answer: str) -> str:
    text = _PUNCTUATION.sub(" ", str(answer).lower().strip())
    words = [NUMBER_WORDS.get(w, w) for w in text.split() if w not in ARTICLES]
    return " ".join(words)


def _annotator_answers(answers: Iterable) -> list[str]:
    return [normalize_answer(a["answer"] if isinstance(a, Mapping) else a) for a in answers]


def vqa_score(prediction: str, answers: Sequence, official: bool = False) -> float:
    """Soft score in [0, 1] of `prediction` against the annotators' `answers` (strings or {"answer": str})."""
    human = _annotator_answers(answers)
    if not human:
        raise ValueError("a VQA question needs at least one annotator answer")
    predicted = normalize_answer(prediction)
    matches = sum(a == predicted for a in human)
    if not official or len(human) < 2:
        return min(matches / 3.0, 1.0)
    return sum(min((matches - (a == predicted)) / 3.0, 1.0) for a in human) / len(human)


def soft_targets(answers: Sequence, answer_to_index: Mapping[str, int], kind: str = "score") -> dict[int, float]:
    """{answer-list index: target} for one question. kind="score": the VQA soft score min(count / 3, 1) (classifier
    targets); kind="share": count / #annotators (ALBEF's answer weights for the decoder). Answers outside the list
    are left out; an empty dict means the question has no valid answer in the list."""
    counts = Counter(_annotator_answers(answers))
    total = sum(counts.values())
    targets = {}
    for answer, count in counts.items():
        index = answer_to_index.get(answer)
        if index is not None:
            targets[index] = min(count / 3.0, 1.0) if kind == "score" else count / total
    return targets


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence], answer_types: Sequence[str] | None = None,
                 official: bool = False) -> dict[str, float]:
    """Mean soft score in percent (`vqa_accuracy`), per answer type (`accuracy_<type>`) and the number of questions."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
    scores = [vqa_score(p, a, official) for p, a in zip(predictions, answers)]
    metrics = {"vqa_accuracy": 100.0 * sum(scores) / max(len(scores), 1), "num_questions": len(scores)}
    if answer_types is not None:
        by_type: dict[str, list[float]] = {}
        for score, kind in zip(scores, answer_types):
            by_type.setdefault(kind, []).append(score)
        for kind, values in sorted(by_type.items()):
            metrics[f"accuracy_{kind.replace('/', '_').replace(' ', '_')}"] = 100.0 * sum(values) / len(values)
    return metrics


def majority_answers(train_answers: Iterable[str], train_question_types: Iterable[str] | None = None) -> tuple[str, dict]:
    """The most frequent answer of the training set, and the most frequent one per question type (baselines)."""
    train_answers = [normalize_answer(a) for a in train_answers]
    overall = Counter(train_answers).most_common(1)[0][0]
    per_type: dict[str, Counter] = {}
    if train_question_types is not None:
        for answer, kind in zip(train_answers, train_question_types):
            per_type.setdefault(kind, Counter())[answer] += 1
    return overall, {kind: counter.most_common(1)[0][0] for kind, counter in per_type.items()}


def write_results(path, question_ids: Sequence[int], predictions: Sequence[str]) -> None:
    """Predictions in the official VQA result format: [{"question_id": int, "answer": str}, ...]."""
    if len(question_ids) != len(predictions):
        raise ValueError(f"{len(question_ids)} question ids for {len(predictions)} predictions")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump([{"question_id": int(q), "answer": str(a)} for q, a in zip(question_ids, predictions)], handle)
