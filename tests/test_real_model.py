"""SmolLM2-135M end to end: PAE beats zero-shot and epochs >= 2 need no device work."""

import pytest

from secure_assist.config import FinetuneConfig
from secure_assist.finetune import run_finetune


@pytest.mark.real_model
def test_pae_on_smollm2_beats_zero_shot_with_cache_only_epochs(tmp_path) -> None:
    # The side network needs a few hundred samples to beat the backbone clearly: on this
    # split it scored 81.5% with 400 and 84.5% with 640 vs 80.0% zero-shot (measured offline
    # on the same forward outputs).
    config = FinetuneConfig(train_samples=640, eval_samples=200, epochs=10, workdir=str(tmp_path / "run"))
    summary = run_finetune(config, progress=False)
    assert summary.device_forwards_epoch1 == 512  # 128 (20%) held out for the safeguard
    assert summary.device_forwards_after_epoch1 == 0
    assert summary.cache_samples == 512 and summary.cache_reads == 512 * 9
    assert summary.upload_bytes_per_sample < 30 * 576 * 2 * 1.1
    assert summary.metrics["accuracy"] > summary.metrics["zero_shot_accuracy"], summary
