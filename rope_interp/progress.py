"""The one progress bar of rope_interp: a tqdm bar drawn by the root process only.

Every loop that shows progress (the shared pass, sweeps, band statistics, the analyses'
experiments) goes through :func:`progress_bar`. Under ``torchrun`` only rank 0 draws
(:func:`rope_interp.distributed.is_root`), so N ranks do not print N bars over each other;
a single process draws as before. A hidden bar still iterates and counts, so code can
``update()`` and ``close()`` it either way.

>>> list(progress_bar(range(3), desc="demo", enabled=False))
[0, 1, 2]
>>> bar = progress_bar(total=2, desc="demo", enabled=False)
>>> bar.update(2)
>>> bar.close()
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import distributed


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    total: int | None = None,
    enabled: bool = True,
    leave: bool = False,
) -> Any:
    """A ``tqdm.auto`` bar over ``iterable`` (or a manual one of ``total`` steps when ``iterable`` is None).

    Args:
        iterable: what to iterate over; None for a bar advanced by ``update()``.
        desc: the bar's label.
        total: the number of steps (default: ``len(iterable)`` where it has one).
        enabled: False hides the bar (the callers' ``progress=False``); it is also hidden on
            every rank but 0 of a distributed run.
        leave: keep the finished bar on screen.
    """
    from tqdm.auto import tqdm

    return tqdm(
        iterable, desc=desc, total=total, disable=not (enabled and distributed.is_root()), leave=leave
    )
