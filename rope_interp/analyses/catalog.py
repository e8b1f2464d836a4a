"""The built-in analyses, in report order: one line per analysis.

To add one, write ``rope_interp/analyses/<name>.py`` ending in ``ANALYSIS = Analysis(...)``
(see :mod:`rope_interp.registry`) and add its record below; the CLI gets a
``rope-interp <name>`` subcommand and the report a section.
"""

from __future__ import annotations

from . import alignment, carrier, harmonics, heads, induction, massive, offsets, sinks, spectra, usage

BUILTIN = (
    usage.ANALYSIS,
    heads.ANALYSIS,
    sinks.ANALYSIS,
    offsets.ANALYSIS,
    massive.ANALYSIS,
    spectra.ANALYSIS,
    induction.ANALYSIS,
    induction.ENTROPY_ANALYSIS,
    carrier.ANALYSIS,
    harmonics.ANALYSIS,
    alignment.ANALYSIS,
)
