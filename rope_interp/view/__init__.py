"""The view layer: offline HTML pages, circuitsvis panels and atomic output folders.

* :mod:`.html` — page building blocks (paragraphs, tables, the table of contents), one offline page;
* :mod:`.panels` — circuitsvis views of band edits (:func:`ablation_view`, :func:`attention_diff`, ...);
* :mod:`.explore` — :func:`explore`: an offline band explorer page that recomputes patterns with bands dropped;
* :mod:`.output` — :class:`StagedOutput`: files appear in ``--out`` only when a run succeeds.
"""

from .explore import Explorer, explore

__all__ = ["Explorer", "explore"]
