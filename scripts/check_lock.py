"""Check that the running environment has exactly the versions of ``requirements.lock``.

    python scripts/check_lock.py            # exit 1 and list the differences when a locked package differs
    python scripts/check_lock.py --freeze   # also print `pip freeze`-style lines of what is installed

Packages installed but not in the lock are listed as a note (a user's extra tools are fine).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import sys
from pathlib import Path

LOCK = Path(__file__).resolve().parent.parent / "requirements.lock"


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[norm(name)] = version.strip()
    return pins


def installed() -> dict[str, str]:
    return {norm(d.metadata["Name"]): d.version for d in md.distributions() if d.metadata["Name"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--freeze", action="store_true")
    args = ap.parse_args(argv)
    pins, have = read_lock(), installed()
    bad = []
    for name, want in sorted(pins.items()):
        got = have.get(name)
        if got is None:
            bad.append(f"  {name}: locked {want}, not installed")
        elif got.split("+")[0] != want.split("+")[0]:
            bad.append(f"  {name}: locked {want}, installed {got}")
    extra = sorted(set(have) - set(pins) - {"rope-interp", "pip", "setuptools", "wheel"})
    if args.freeze:
        for name in sorted(have):
            print(f"{name}=={have[name]}")
    if extra:
        print(f"[lock] note: {len(extra)} installed package(s) not in the lock: {', '.join(extra)}")
    if bad:
        print(f"[lock] {len(bad)} package(s) differ from requirements.lock:\n" + "\n".join(bad))
        print("[lock] fix: bash scripts/bootstrap.sh (installs the lock), or bash scripts/lock.sh to relock")
        return 1
    print(f"[lock] all {len(pins)} locked packages installed at their locked versions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
