"""The README's examples run as shown and print what they say.

A ```python block runs as a script from the repository root; each `# prints: TEXT` comment in it is a line its
output must contain. A ```bash line that ends in `# prints: TEXT` runs in the repository root with the project's
venv first on PATH, and its last output line must be TEXT. Other shell lines (installs, GPU or hub runs) are
documentation only.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(python|bash)\n(.*?)```", README, flags=re.S)
PYTHON = [code for kind, code in BLOCKS if kind == "python"]
SHELL = [line for kind, code in BLOCKS if kind == "bash" for line in code.splitlines() if "# prints: " in line]


def expected(text: str) -> list[str]:
    return [line.split("# prints: ", 1)[1].strip() for line in text.splitlines() if "# prints: " in line]


def test_the_readme_has_checked_examples():
    assert PYTHON and SHELL and all(expected(code) for code in PYTHON)


@pytest.mark.parametrize("code", PYTHON, ids=[f"python-{i}" for i in range(len(PYTHON))])
def test_python_example(code):
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    for line in expected(code):
        assert line in result.stdout.splitlines(), (line, result.stdout)


@pytest.mark.parametrize("line", SHELL, ids=[f"shell-{i}" for i in range(len(SHELL))])
def test_shell_example(line):
    command, want = line.split("# prints: ", 1)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == want.strip()
