"""Generation tasks: instruction data with free-text answers.

A row holds an instruction, an optional input and the answer (Alpaca's columns
`instruction`, `input`, `output` by default; other names are configurable). The prompt
is the backbone's chat template around the user turn when the tokenizer has one, or a
template with `{instruction}` and `{input}` slots. Answers are truncated to
`max_answer_tokens` tokens; one that fits whole is followed by the end-of-sequence token
(the chat template's end of turn), so the model also learns where to stop. Every bad
row (missing column, empty answer, an answer that tokenizes to nothing) is reported
with its file and line, as an error or, with `skip_invalid`, as a row left out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from protocol.errors import UserInputError
from protocol.data.tasks import MAX_TEXT_CHARS, SkippedRows, parse_rows

GENERATION_TASK = "generation"
MAX_PROMPT_TOKENS = 256
# Without a chat template and without --template: Alpaca's own prompt layout.
FALLBACK_TEMPLATE = "Instruction: {instruction}\nInput: {input}\nResponse:"


@dataclass(frozen=True)
class InstructionExample:
    """One instruction row; `source` ('file:line') names it in error messages."""

    instruction: str
    input: str
    output: str
    source: str = ""

    @property
    def text(self) -> str:
        """The user's turn: the instruction, then the input when there is one."""
        return self.instruction + (f"\n\n{self.input}" if self.input else "")

    def record(self) -> dict[str, object]:
        """What the device's ground truth keeps of this example."""
        return {"text": self.text, "answer": self.output}


@dataclass(frozen=True)
class InstructionTask:
    """How instruction rows become prompts and answer tokens."""

    name: str = GENERATION_TASK
    template: str | None = None  # None: the backbone's chat template (FALLBACK_TEMPLATE without one)
    instruction_column: str = "instruction"
    input_column: str = "input"
    output_column: str = "output"
    max_answer_tokens: int = 32

    def __post_init__(self) -> None:
        if self.template is not None and "{instruction}" not in self.template:
            raise UserInputError(f"prompt template {self.template!r} lacks the '{{instruction}}' slot")
        if not 1 <= self.max_answer_tokens <= 512:
            raise UserInputError(f"max_answer_tokens must be in 1..512, got {self.max_answer_tokens}")

    def prompt(self, tokenizer: Any, example: InstructionExample) -> str:
        """The prompt text whose continuation is the answer."""
        if self.template is None and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template([{"role": "user", "content": example.text}], tokenize=False,
                                                 add_generation_prompt=True)
        template = self.template or FALLBACK_TEMPLATE
        return template.replace("{instruction}", example.instruction).replace("{input}", example.input)

    def prompt_ids(self, tokenizer: Any, example: InstructionExample) -> list[int]:
        """Prompt token ids, cut from the left to MAX_PROMPT_TOKENS (the end leads into the answer)."""
        # A chat template writes its own special tokens; a plain template gets the tokenizer's.
        special = self.template is not None or not getattr(tokenizer, "chat_template", None)
        return tokenizer.encode(self.prompt(tokenizer, example), add_special_tokens=special)[-MAX_PROMPT_TOKENS:]

    def answer_ids(self, tokenizer: Any, example: InstructionExample) -> list[int]:
        """The answer's tokens, at most max_answer_tokens; end of sequence appended when it fits."""
        ids = tokenizer.encode(example.output, add_special_tokens=False)
        if not ids:
            raise UserInputError(f"{example.source}: the answer tokenizes to nothing")
        if len(ids) < self.max_answer_tokens and tokenizer.eos_token_id is not None:
            return ids + [tokenizer.eos_token_id]
        return ids[:self.max_answer_tokens]

    def to_json(self) -> dict[str, object]:
        """The model file's record of the task (with its kind)."""
        return {"kind": GENERATION_TASK, **asdict(self)}


def parse_instructions(path: Path | str, task: InstructionTask,
                       skip_invalid: bool = False) -> tuple[list[InstructionExample], SkippedRows]:
    """Instruction rows of a TSV, CSV or JSONL file (optionally .gz), checked row by row, and
    the rows left out (none unless `skip_invalid`)."""

    def instruction(where: str, record: dict[str, object]) -> InstructionExample:
        for column in (task.instruction_column, task.output_column):
            if column not in record:
                raise UserInputError(f"{where}: missing column {column!r}")
        values = [record.get(column) for column in (task.instruction_column, task.input_column, task.output_column)]
        if any(not isinstance(v, (str, type(None))) for v in values):
            raise UserInputError(f"{where}: instruction, input and answer must be text")
        text, given, output = ((v or "").strip() for v in values)
        if not text:
            raise UserInputError(f"{where}: empty instruction")
        if not output:
            raise UserInputError(f"{where}: empty answer")
        if len(text) + len(given) + len(output) > MAX_TEXT_CHARS:
            raise UserInputError(f"{where}: row longer than {MAX_TEXT_CHARS} characters")
        return InstructionExample(instruction=text, input=given, output=output, source=where)

    return parse_rows(Path(path), instruction, skip_invalid)


def load_instructions(path: Path | str, task: InstructionTask, skip_invalid: bool = False) -> list[InstructionExample]:
    """Instruction rows of a data file; with `skip_invalid`, bad rows are reported on stderr and left out."""
    examples, skipped = parse_instructions(path, task, skip_invalid)
    skipped.report()
    return examples
