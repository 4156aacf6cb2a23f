"""Probe how a model answers easy-chart questions that need a lookup by content, one type at a time.

    python examples/tiny_docvqa/probe_charts.py examples/tiny_docvqa/model --charts 20

Draws fresh easy charts (a seed no split uses) and asks, for every bar, "What is the value of X?" (find the row
by its label) and "Which bar has the value N?" (find the row by its value), plus highest/lowest once per chart
(found by bar length). Prints exact-match accuracy per question type and a few replies.
"""

from __future__ import annotations

import argparse
import collections

from zaya_vl.data.documents import make_document, render_document
from zaya_vl.prompts import docvqa_prompt
from zaya_vl.inference import VLAssistant

PROBE_SEED = 1234  # not the build's seed 0: these charts are in no split
IMAGE_SIZE = (336, 336)


def questions(chart) -> list[tuple[str, str, str]]:
    """(type, question, gold answer) for one chart."""
    rows = []
    for label, value in zip(chart.labels, chart.values):
        rows += [("value", f"What is the value of {label}?", str(value)),
                 ("lookup", f"Which bar has the value {value}?", label)]
    return rows + [("highest", "Which bar is the highest?", chart.labels[chart.highest]),
                   ("lowest", "Which bar is the lowest?", chart.labels[chart.lowest])]


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--charts", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    assistant = VLAssistant.from_pretrained(args.model)
    items = []
    for index in range(args.charts):
        doc = make_document(PROBE_SEED, "probe", index, "chart", "easy")
        image, _ = render_document(doc, IMAGE_SIZE)
        items += [(image, kind, question, gold) for kind, question, gold in questions(doc.content)]
    replies = []
    for start in range(0, len(items), args.batch_size):
        chunk = items[start:start + args.batch_size]
        replies += assistant.generate([[image] for image, *_ in chunk],
                                      [docvqa_prompt(question) for _, _, question, _ in chunk], 8)
    correct = collections.defaultdict(list)
    for (_, kind, _, gold), reply in zip(items, replies):
        correct[kind].append(reply.strip().lower() == gold.lower())
    accuracy = {kind: 100 * sum(hits) / len(hits) for kind, hits in correct.items()}
    for kind, value in accuracy.items():
        print(f"{kind:8s} {value:5.1f} % exact  ({len(correct[kind])} questions)")
    for (_, kind, question, gold), reply in list(zip(items, replies))[:6]:
        print(f"  {question!r}: {reply!r} (gold {gold!r})")
    return accuracy


if __name__ == "__main__":
    main()
