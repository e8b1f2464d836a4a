"""The read layer: capture rotated q/k per band and decompose attention scores exactly by band.

* :mod:`.capture` — :func:`band_hooks`, :class:`BandCapture`, :class:`BandStats` (streaming statistics);
* :mod:`.decompose` — :func:`band_scores` and :class:`BandScores` (per-band score terms);
* :mod:`.masks` — the soft-cap and the causal / sliding-window mask the model applies to its scores.
"""
