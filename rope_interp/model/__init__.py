"""The model layer: the only folder that imports TransformerLens and transformers.

* :mod:`.adapter` — one adapter object per model kind (``HookedTransformer``, ``TransformerBridge``),
  chosen once when a model is first seen; everything above asks it for config, tables and tokens;
* :mod:`.bridge` — what the adapter needs to read a ``TransformerBridge`` (HF rotary tables, scaling);
* :mod:`.layout` — :class:`~rope_interp.model.layout.RotaryBands`, a model's band layout and frequencies;
* :mod:`.hooks` — hook names (the one place that spells them) and :class:`~rope_interp.model.hooks.HookSet`;
* :mod:`.load` — :func:`~rope_interp.model.load.load_model` (GGUF, HF folders, the embedded SmolLM2);
* :mod:`.compat` — known breaks of the installed stack, warned by name;
* :mod:`.testing` — builders of tiny random models for tests, doctests and examples.
"""
