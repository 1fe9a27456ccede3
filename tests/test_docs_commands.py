"""Every shell command and Python block that README.md and docs/*.md show is either run here
as written (on the demo data, epochs capped by LONGTAIL_MAX_EPOCHS=1) or named with the reason
it is not, so that a documented command cannot break unnoticed.

A command whose block shows `longtail: error: ...` after it must fail with exit status 2 and
that message; every other one must succeed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FMNIST = Path("/usr/share/datasets/fashion-mnist")

# Commands not run here, by the pattern that identifies them, and why.
NOT_RUN = [
    (r"^make (demo|test)\b", "the README's set-up commands: CI runs 'make test' itself, and "
                             "the demo's own command is run below"),
    (r"^make (bench|lint|docs)\b", "development targets, run by their own make target"),
    (r"\b(CONFIG|RUN_DIR|SOURCE|KEY=VALUE)\b|\.\.\.|\[", "a synopsis with placeholders"),
    (r"/data/|/tmp/glyphs_lt|my_data\.yaml|my_balanced_images", "needs the user's data or the "
     "generated Glyphs-LT set (bench/glyphs_lt.py, a minute to build)"),
    (r"^torchrun ", "needs several GPUs (tests/test_end_to_end.py runs torchrun on CPU)"),
    (r"^python bench/", "benchmarks: make bench"),
    (r"^(pip|apt-get|sudo|cd|git) ", "set-up of the machine"),
    (r"runs/(bake|wd|steps)/", "the measurement loops of docs/results.md (seeds x several "
                               "stage-1 runs); the three-seed loop and grid --losses "
                               "(test_end_to_end) run the same commands"),
    (r"model\.name=timm/", "timm backbones train for minutes even capped at one epoch; "
                           "tests/test_timm.py runs a ConvNeXt and a ViT end to end"),
]


PYTHON_BLOCK = "python - <<'EOF'\n"


def documented_commands() -> list[tuple[str, int, str, str | None]]:
    """Return (file, line, command, expected error or None) of every shell command in fenced
    sh/console blocks, and of every python block (as one command)."""
    commands = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        block, code = None, []
        for number, line in enumerate(lines, start=1):
            fence = re.match(r"^```(\w*)", line)
            if fence:
                if block == "python":  # run as a whole, in order with the shell commands
                    commands.append((path.name, number - len(code),
                                     PYTHON_BLOCK + "\n".join(code) + "\nEOF", None))
                block, code = None if block is not None else fence.group(1), []
                continue
            if block == "python":
                code.append(line)
                continue
            if block not in ("", "sh", "console", "bash"):
                continue
            text = line.strip()
            prompt = text.startswith("$ ")
            text = text.removeprefix("$ ")
            if not re.match(r"^(longtail|python|make|torchrun|for|pip|apt-get|sudo|cd|git) ",
                            text):
                continue
            while text.endswith("\\"):  # continued on the next lines
                text = text[:-1] + lines[number].strip()
                number += 1
            text = text.split("  #")[0].strip()
            expected = None
            if prompt and number < len(lines) and lines[number].startswith("longtail: error:"):
                expected = lines[number].strip()
            commands.append((path.name, number, text, expected))
    return commands


def reason_not_run(command: str) -> str | None:
    if command.startswith(PYTHON_BLOCK):
        return None
    for pattern, reason in NOT_RUN:
        if re.search(pattern, command):
            return reason
    return None


COMMANDS = documented_commands()


def test_documentation_shows_commands_and_runs_most():
    run = [c for c in COMMANDS if reason_not_run(c[2]) is None]
    assert len(COMMANDS) >= 10 and len(run) >= 5, COMMANDS


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_every_documented_command_runs_as_written(tmp_path):
    """The commands of each file, in order, in one working folder (later ones use the runs
    earlier ones made), with the repository's configs and bench folders beside them."""
    for name in ("configs", "bench"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "LONGTAIL_MAX_EPOCHS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT / "src")}
    failures = []
    for doc, line, command, expected in COMMANDS:
        if reason_not_run(command) is not None:
            continue
        result = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=600)
        where = f"{doc}:{line}: {command}"
        if expected is not None:
            if result.returncode != 2 or expected not in result.stderr:
                failures.append(f"{where}: expected {expected!r}, got {result.stderr[-300:]!r}")
        elif result.returncode != 0:
            failures.append(f"{where}: exit {result.returncode}: {result.stderr[-500:]}")
    assert not failures, "\n".join(failures)
