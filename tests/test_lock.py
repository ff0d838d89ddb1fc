"""The lock file: constraints.txt pins every direct dependency inside pyproject.toml's bounds, run.sh
installs under it, and the README's command that writes it reproduces the committed file from the
environment the suite runs in (CI installs that environment from the lock, so they agree)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import lock  # noqa: E402  (scripts/lock.py: the direct requirements and the names left out of the lock)


def pinned(path: Path = ROOT / "constraints.txt") -> dict[str, Version]:
    """{canonical name: version} of the lock; every line must be one exact pin."""
    pins: dict[str, Version] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==" and not req.marker, f"{path.name}:{number}: {line}"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{path.name}:{number}: {req.name} pinned twice"
        pins[name] = Version(specs[0].version)
    return pins


def test_every_direct_dependency_is_bounded_and_pinned_inside_its_range() -> None:
    pins = pinned()
    direct = lock.direct_requirements()
    assert len(direct) >= 30  # the dependencies and the test extra, not an empty parse
    for req in direct:
        upper = [s for s in req.specifier if s.operator in ("<", "<=", "==", "~=")]
        assert upper, f"pyproject.toml: {req} has no upper bound"
        if not lock.applies(req):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is outside {req}"
    assert not set(pins) & lock.NOT_LOCKED  # alignloop and the --no-deps packaged models stay out
    assert str(pins["torch"]) == "2.13.0"  # the version run.sh installs first, without a local label


def test_run_sh_installs_torch_and_alignloop_under_the_lock() -> None:
    script = (ROOT / "scripts" / "run.sh").read_text(encoding="utf-8")
    installs = [ln.strip() for ln in script.splitlines() if re.search(r"\binstall\b", ln) and "PIP" in ln]
    assert len(installs) == 3
    torch_line, alignloop_line, models_line = installs
    assert '-c "$LOCK" torch==2.13.0' in torch_line and '-c "$LOCK" -e "$ROOT[test]"' in alignloop_line
    assert "--no-deps" in models_line
    assert 'LOCK="$ROOT/constraints.txt"' in script


def test_readme_lock_command_reproduces_the_committed_lock(tmp_path: Path) -> None:
    """The README's command, run as written in a folder laid out like the repository (its .venv is the
    Python running this suite), writes the pins of constraints.txt exactly."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Dependencies and the lock file", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) == 1 and "scripts/lock.py --out constraints.txt" in blocks[0]
    os.symlink(sys.prefix, tmp_path / ".venv")
    os.symlink(ROOT / "scripts", tmp_path / "scripts")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", blocks[0]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert pinned(tmp_path / "constraints.txt") == pinned(), "constraints.txt is not what this environment holds"
