"""The README's install instructions (issue 15, item 11)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _section(text: str, heading: str) -> str:
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def _bash_blocks(section: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def test_user_install_is_runtime_only_with_cpu_torch():
    user = "\n".join(_bash_blocks(_section((ROOT / "README.md").read_text(), "Install")))
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in user
    installs = [line for line in user.splitlines() if "pip install" in line and "torch" not in line]
    assert installs and all("[dev]" not in line and " -e " not in line for line in installs)


def test_developer_install_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    ci_line = re.search(r"^pip install torch==.*$", ci, flags=re.M).group(0)
    dev = "\n".join(
        _bash_blocks(_section((ROOT / "README.md").read_text(), "Set up for development"))
    )
    assert ci_line in dev and "python -m pytest" in dev
