"""Check that the running environment has exactly the versions of ``requirements.lock``.

    python scripts/check_lock.py            # exit 1 and list the differences when a locked package differs
    python scripts/check_lock.py --freeze   # also print `pip freeze`-style lines of what is installed
    python scripts/check_lock.py --lock requirements-tl4.lock   # check the TransformerLens 4 set instead
                                            # (or ROPE_INTERP_TL=4, as scripts/bootstrap.sh uses it)

Packages installed but not in the lock are listed as a note (a user's extra tools are fine).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
LOCKS = {"3": LOCK, "4": ROOT / "requirements-tl4.lock"}  # ROPE_INTERP_TL -> lock file


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
    ap.add_argument("--lock", type=Path, help="the lock file to check (default: by ROPE_INTERP_TL, else 3)")
    args = ap.parse_args(argv)
    lock = args.lock
    if lock is None:
        tl = os.environ.get("ROPE_INTERP_TL", "3")
        if tl not in LOCKS:
            print(f"[lock] ROPE_INTERP_TL={tl!r}: use 3 (requirements.lock) or 4 (requirements-tl4.lock)")
            return 2
        lock = LOCKS[tl]
    if not lock.is_file():
        print(f"[lock] no lock file {lock}")
        return 2
    pins, have = read_lock(lock), installed()
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
        env = "ROPE_INTERP_TL=4 " if lock.name == LOCKS["4"].name else ""
        print(f"[lock] {len(bad)} package(s) differ from {lock.name}:\n" + "\n".join(bad))
        print(
            f"[lock] fix: {env}bash scripts/bootstrap.sh (installs the lock), or {env}bash scripts/lock.sh to relock"
        )
        return 1
    of = "" if lock.name == LOCK.name else f" of {lock.name}"
    print(f"[lock] all {len(pins)} locked packages{of} installed at their locked versions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
