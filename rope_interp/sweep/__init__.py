"""The sweep layer: grids of band conditions, the tiers that evaluate them, metrics and specs.

* :mod:`.grid` — :class:`Grid`, :class:`CellOp`, :class:`SweepResult`;
* :mod:`.selection` — :class:`Selection`, a sweep's keywords validated once (every tier runs on one);
* :mod:`.tiers` — the tier table and :func:`run_sweep` (naive, exact, attribution, qk_attribution, refine);
* :mod:`.direct` — analytic direct effects of every band on every pattern;
* :mod:`.patching` — clean → corrupted band patching and its named wrappers;
* :mod:`.metrics` — :func:`logit_diff`, :func:`loss_metric`, :func:`kl_metric`, :class:`PatternDistance`;
* :mod:`.spec` — :class:`SweepSpec`, :class:`InterventionSpec` (JSON records of what was run).
"""
