"""A custom classification task from instruction data: which kind of request produced this answer?

Labels are derived from the Alpaca instruction's first word *(choice)*: create (generate,
write, design, ...), explain (describe, explain, summarize, what, how, ...), edit
(rewrite, edit, convert, translate, ...), classify (classify, categorize, identify, ...);
instructions starting with any other word are left out. The text is the answer (the
`output` field), cut to its first `--max-words` words so the forward passes stay cheap.
Four imbalanced classes, real text, columns `answer` / `request_type`: nothing like SST-2.

    python benchmarks/alpaca_request_types.py --output runs/alpaca_tasks/requests.jsonl

prints a JSON summary (rows per class) and writes the JSON-lines file.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca" / "alpaca_5000.jsonl"
REQUEST_TYPES = {
    "create": ("generate", "create", "write", "compose", "design", "construct", "develop", "brainstorm", "come",
               "make", "suggest", "invent", "produce", "draft", "formulate", "devise"),
    "explain": ("describe", "explain", "summarize", "compare", "analyze", "discuss", "tell", "what", "why", "how",
                "evaluate", "outline", "clarify", "elaborate"),
    "edit": ("rewrite", "edit", "change", "convert", "translate", "paraphrase", "correct", "rephrase", "reword",
             "reformat", "shorten", "transform", "revise"),
    "classify": ("classify", "categorize", "identify", "determine", "detect", "select", "decide", "label", "sort"),
}
TEMPLATE = "Here is an assistant's answer: {text}\nThe user's request was to"
LABEL_WORDS = " create| explain| edit| classify"


def request_type(instruction: str) -> str | None:
    """The request type named by the instruction's first word, or None."""
    words = instruction.split()
    first = words[0].lower().strip(",.:;!?") if words else ""
    return next((kind for kind, verbs in REQUEST_TYPES.items() if first in verbs), None)


def derive_rows(source: Path, max_words: int = 60) -> list[dict[str, str]]:
    """One row per Alpaca example whose request type is known: its answer and the type."""
    rows = []
    for line in source.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        kind = request_type(record["instruction"])
        answer = " ".join(record["output"].split()[:max_words])
        if kind is not None and answer:
            rows.append({"answer": answer, "request_type": kind})
    return rows


def main() -> None:
    """Write the derived task and print its class counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(SOURCE), help="Alpaca JSON lines (instruction, input, output)")
    parser.add_argument("--output", required=True, help="JSON-lines file to write")
    parser.add_argument("--max-words", type=int, default=60, help="keep the first N words of each answer")
    args = parser.parse_args()
    rows = derive_rows(Path(args.source), args.max_words)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(json.dumps({"rows": len(rows), "classes": Counter(r["request_type"] for r in rows),
                      "template": TEMPLATE, "label_words": LABEL_WORDS, "output": args.output}, indent=1))


if __name__ == "__main__":
    main()
