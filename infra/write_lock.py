"""Write requirements.lock from the active environment, keeping only `name==version` pins.

`pip freeze` writes `name @ file:///...` for a package installed from a local wheel, and a new machine cannot
install that line. `pip list --format=freeze` names every installed distribution by its version instead; this
script refuses anything that is still not a plain pin, so a lock that only one machine can install is never written.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*$")
PROJECT = "shoprec"
# what the venv itself brings, as `pip freeze` leaves out: pinning them would reinstall the installer mid-install
TOOLING = {"pip", "setuptools", "wheel"}


def bad_lines(lines: list[str]) -> list[str]:
    """The lines of a lock that are not a plain `name==version` pin (comments and blanks are allowed)."""
    return [line for line in lines if line.strip() and not line.startswith("#") and not PIN.match(line.strip())]


def pins(freeze_output: str) -> list[str]:
    """Sorted pins from `pip list --format=freeze` output, without the project itself."""
    lines = [line.strip() for line in freeze_output.splitlines() if line.strip()]
    lines = [line for line in lines if line.split("==")[0].lower() not in {PROJECT, *TOOLING}]
    return sorted(lines, key=lambda line: line.split("==")[0].lower())


def main(out: str = "requirements.lock") -> int:
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--format=freeze", "--exclude-editable"],
        check=True, capture_output=True, text=True,
    ).stdout
    lines = pins(listed)
    bad = bad_lines(lines)
    if bad:
        print(f"{out}: not a name==version pin: {bad[0]!r} (and {len(bad) - 1} more)", file=sys.stderr)
        return 2
    target = Path(out)
    fd, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=".lock-")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, target)
    print(f"{out}: {len(lines)} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
