"""SmolLM2-135M end to end: PAE beats zero-shot and epochs >= 2 need no device work."""

import pytest

from secure_assist.config import FinetuneConfig
from secure_assist.finetune import run_finetune


@pytest.mark.real_model
def test_pae_on_smollm2_beats_zero_shot_with_cache_only_epochs(tmp_path) -> None:
    config = FinetuneConfig(train_samples=320, eval_samples=200, epochs=10, workdir=str(tmp_path / "run"))
    summary = run_finetune(config, progress=False)
    assert summary["device_forwards_epoch1"] == 320
    assert summary["device_forwards_after_epoch1"] == 0
    assert summary["cache_samples"] == 320 and summary["cache_reads"] == 320 * 9
    assert summary["upload_bytes_per_sample"] < 30 * 576 * 2 * 1.1
    assert summary["accuracy"] > summary["zero_shot_accuracy"] + 0.01, summary
