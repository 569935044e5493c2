"""Local prediction with a fine-tuned model file, on the device: argmax(p_b + g_φ(A)) for a
classification model, greedy answers with the correction for a generation model."""

from __future__ import annotations

from typing import Any

from protocol.model.backbone import load_backbone
from protocol.device.forward_device import DeviceRole
from protocol.modes.generation.device import GenerationDevice
from protocol.data.instructions import InstructionExample, InstructionTask
from protocol.model.model_io import FineTunedModel, load_finetuned
from protocol.data.tasks import Example


def predict_texts(model_file: str, texts: list[str], progress: bool = True) -> list[dict[str, Any]]:
    """One row per text: the predicted label, its label word and both probability vectors; for a
    generation model, the text is the instruction and the row holds the generated answer."""
    model = load_finetuned(model_file)
    if isinstance(model.task, InstructionTask):
        return generate_answers(model, texts, progress)
    device = DeviceRole(load_backbone(model.backbone), model.task, layers=model.layers,
                        payload_dtype=model.payload_dtype, progress=progress)
    # Labels are unknown at prediction time; 0 is a placeholder the scores never read.
    backbone_probs, combined = device.scores([Example(text=t, label=0) for t in texts], model.side_network)
    rows = []
    for text, base, final in zip(texts, backbone_probs, combined):
        index = int(final.argmax())
        rows.append({"text": text, "label": model.task.labels[index], "label_word": model.task.label_words[index],
                     "scores": [round(float(v), 6) for v in final],
                     "backbone_probabilities": [round(float(v), 6) for v in base]})
    return rows


def generate_answers(model: FineTunedModel, instructions: list[str], progress: bool = True) -> list[dict[str, Any]]:
    """Greedy answers (at most the model's max_answer_tokens) of a generation model, one row per instruction."""
    device = GenerationDevice(load_backbone(model.backbone), model.task, layers=model.layers,
                              payload_dtype=model.payload_dtype, progress=progress)
    examples = [InstructionExample(instruction=text, input="", output="") for text in instructions]
    answers = device.generate(examples, model.side_network)
    return [{"text": text, "answer": device.backbone.tokenizer.decode(ids, skip_special_tokens=True)}
            for text, ids in zip(instructions, answers)]
