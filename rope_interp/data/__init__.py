"""Small public-domain English texts bundled with rope_interp (for analyses, tests and demos)."""

from __future__ import annotations

from importlib import resources


def available_texts() -> list[str]:
    return sorted(p.name[:-4] for p in resources.files(__name__).iterdir() if p.name.endswith(".txt"))


def load_text(name: str = "corpus") -> str:
    """The text of a bundled file ``rope_interp/data/<name>.txt``.

    >>> len(load_text()) > 1000
    True
    """
    path = resources.files(__name__) / f"{name}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no bundled text {name!r}; available: {available_texts()}")
    return path.read_text(encoding="utf-8")
