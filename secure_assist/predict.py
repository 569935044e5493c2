"""Local prediction with a fine-tuned model file: argmax(p_b + g_φ(A)) on the device."""

from __future__ import annotations

from typing import Any

from protocol.backbone import load_backbone
from protocol.device import DeviceRole
from protocol.model_io import load_finetuned
from protocol.tasks import Example


def predict_texts(model_file: str, texts: list[str], progress: bool = True) -> list[dict[str, Any]]:
    """One row per text: the predicted label, its label word and both probability vectors."""
    model = load_finetuned(model_file)
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
