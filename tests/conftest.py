"""Shared fixtures: tiny backbones and one tiny audit are built once per session (they are read-only)."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch

from protocol.model.backbone import Backbone, load_backbone


@pytest.fixture(scope="session")
def tiny_llama() -> Backbone:
    """A two-layer random llama with the real SmolLM2 tokenizer."""
    torch.set_num_threads(1)
    return load_backbone("tiny-llama", device=torch.device("cpu"))


AUDIT_ATTACKS = ("delta_argmax", "public_head_zero_shot", "clustering_delta", "model_completion_k8", "gradient_norm",
                 "model_extraction", "pivot_nearest_embedding")


@pytest.fixture(scope="session")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """(config, report, [report.json, report.md, report.html]) of one tiny-llama audit, shared by the
    report and browser tests: the reference rows (local LoRA too), plain PAE, Gaussian DP and CKKS."""
    # Imported here so that test sessions which never audit do not pay for matplotlib.
    from secure_assist.audit.config import AuditConfig
    from secure_assist.audit.report import write_reports
    from secure_assist.audit.runner import run_audit

    config = AuditConfig(model="tiny-llama", train_samples=40, eval_samples=16, epochs=2,
                         variants=("none", "gaussian", "he_ckks"), attacks=AUDIT_ATTACKS, dp_releases=400,
                         attack_samples=12, with_lora=True, output=str(tmp_path_factory.mktemp("audit")))
    report = run_audit(config, progress=False)
    return config, report, write_reports(report, config.output)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[tuple]:
    """(executor, address) of one local Ray instance with 2 CPUs, shared by the Ray tests and
    stopped at the end. Without Ray the tests skip, unless SECURE_ASSIST_REQUIRE_RAY=1 (set by CI)."""
    import os

    try:
        import ray  # noqa: F401
    except ImportError:
        reason = 'the Ray executor tests need Ray: pip install -e ".[test,ray]"'
        if os.environ.get("SECURE_ASSIST_REQUIRE_RAY") == "1":
            pytest.fail(reason + "; SECURE_ASSIST_REQUIRE_RAY=1 makes this a failure")
        pytest.skip(reason)
    from secure_assist.executors.ray_cluster import RayExecutor

    executor = RayExecutor(cpus=2)
    address = executor.start()
    yield executor, address
    executor.close()
