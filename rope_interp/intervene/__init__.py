"""The intervene layer: what a band edit is, and how it is attached to a model.

* :mod:`.modes` — the mode table (``zero``, ``mean``, ``no_rotation``, ``shift``, ``scale_freq``, ...),
  pure functions on ``[..., band, 2]`` views, and the mode resolved once into a frozen value;
* :mod:`.ablate` — :func:`ablate_bands`, :func:`prope`, :class:`BandIntervention` (scoped hooks),
  with the bridge's position recovery.
"""
