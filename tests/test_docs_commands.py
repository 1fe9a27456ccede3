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


def made_paths(command: str) -> list[str]:
    """The paths a command writes (--out, --json, a shell redirection), up to any shell variable:
    a later command that names one of them uses what this one made."""
    found = re.findall(r"(?:--out|--json|>)\s+(\S+)", command)
    return [path.split("$")[0] for path in found if path.split("$")[0]]


def chains(commands: list[tuple[str, int, str, str | None]]) -> list[list[tuple]]:
    """Group the commands to run into chains that do not use each other's files: a command
    joins the chain of every earlier command whose made paths it names, in order."""
    groups: list[list[tuple]] = []
    owner: dict[str, int] = {}  # made path -> its group
    for entry in commands:
        command = entry[2]
        joined = sorted({g for path, g in owner.items() if path in command})
        target = joined[0] if joined else len(groups)
        if not joined:
            groups.append([])
        for g in joined[1:]:  # names two chains' files: one chain from here on
            groups[target].extend(groups[g])
            groups[g] = []
            owner.update({p: target for p, o in owner.items() if o == g})
        groups[target].append(entry)
        owner.update({path: target for path in made_paths(command)})
    return [g for g in groups if g]


def trainings(command: str) -> int:
    """How many trainings a command runs (its loop's values, grid's samplers), to start the
    longest chains first."""
    loop = re.search(r"\bfor \w+ in ([^;]+);", command)
    samplers = re.search(r"--samplers (\S+)", command)
    return (len(re.findall(r"longtail (?:run|grid) ", command))
            * (len(loop.group(1).split()) if loop else 1)
            * (len(samplers.group(1).split(",")) if samplers else 1))


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_every_documented_command_runs_as_written(tmp_path):
    """Each chain of commands (those that use another's runs, in their documents' order) in
    its own working folder with the repository's configs and bench folders beside it; two
    chains at a time, each process on one thread, so that both cores are busy (most of a
    command's time is Python importing torch, on one core)."""
    from concurrent.futures import ThreadPoolExecutor

    env = {**os.environ, "LONGTAIL_MAX_EPOCHS": "1", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT / "src")}
    todo = [c for c in COMMANDS if reason_not_run(c[2]) is None]

    def run_chain(number: int, chain: list[tuple]) -> list[str]:
        folder = tmp_path / f"chain{number}"
        folder.mkdir()
        for name in ("configs", "bench"):
            (folder / name).symlink_to(ROOT / name)
        failures = []
        for doc, line, command, expected in chain:
            result = subprocess.run(["bash", "-c", command], cwd=folder, env=env,
                                    capture_output=True, text=True, timeout=600)
            where = f"{doc}:{line}: {command}"
            if expected is not None:
                if result.returncode != 2 or expected not in result.stderr:
                    failures.append(f"{where}: expected {expected!r}, got "
                                    f"{result.stderr[-300:]!r}")
            elif result.returncode != 0:
                failures.append(f"{where}: exit {result.returncode}: {result.stderr[-500:]}")
        return failures

    with ThreadPoolExecutor(max_workers=2) as pool:
        order = sorted(chains(todo), key=lambda chain: -sum(trainings(c[2]) for c in chain))
        results = pool.map(run_chain, *zip(*enumerate(order)))
        failures = [f for chain in results for f in chain]
    assert not failures, "\n".join(failures)


def test_chains_keep_a_command_with_the_runs_it_uses():
    commands = [("a.md", 1, "longtail run c.yaml --out runs/x", None),
                ("a.md", 2, "longtail config demo > my.yaml", None),
                ("a.md", 3, "for s in 0 1; do longtail run c.yaml --out runs/s/seed$s; done",
                 None),
                ("a.md", 4, "longtail extract runs/x --out features/x", None),
                ("a.md", 5, "longtail summarize runs/s/seed0 runs/s/seed1", None),
                ("a.md", 6, "python - <<'EOF'\nload('features/x')\nEOF", None),
                ("a.md", 7, "longtail run my.yaml --out runs/m", None)]
    assert [[c[1] for c in chain] for chain in chains(commands)] == [[1, 4, 6], [2, 7], [3, 5]]
    assert [trainings(c[2]) for c in commands] == [1, 0, 2, 0, 0, 0, 1]
    assert trainings("longtail grid c.yaml --samplers instance,class --out g") == 2
