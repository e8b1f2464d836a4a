"""No silent wrong results. A generated matrix of bad inputs for every public entry point.

Values come from one generator per argument kind (an index, a list of indices, a float
parameter, a positive count, token ids, a model); each generator is applied to a table of
entry points (``ENTRIES``). Every bad value must raise a :class:`RopeInterpError` subclass
(with the fix in its message), never be coerced into a number that looks right. Good
spellings of the same value (numpy ints, integer tensors) must give the same result as ints.
The CLI subcommands get the same treatment in-process: a bad option is a non-zero exit with a
one-line error.

Cases that fail today in code owned by another area are ``xfail(strict=True)`` in ``OWNED``:
they turn into errors (and must be removed from ``OWNED``) once that area is fixed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

import rope_interp as ri
from rope_interp import analyses
from rope_interp.errors import (
    HookStateError,
    LayerError,
    MergeError,
    NotRotaryError,
    PaddingError,
    ParameterError,
    RopeInterpError,
    TokenError,
)
from rope_interp.model.testing import tiny_model

N_LAYERS, N_HEADS, N_KV, N_BANDS, D_HEAD, D_VOCAB, N_CTX = 2, 4, 2, 8, 16, 50, 64
TOKS = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]])


@pytest.fixture(scope="module")
def model():
    return tiny_model()


# ---- generators: one per argument kind ------------------------------------------------------------------
def bad_index(size: int) -> Iterator[tuple[str, Any]]:
    """Values no index argument may accept (an index must be an int or an integer tensor, in range)."""
    yield "float", 1.5
    yield "integral_float", 1.0
    yield "bool", True
    yield "str_digit", "1"
    yield "str_digits", "10"
    yield "numpy_float", np.float64(1.0)
    yield "float_tensor", torch.tensor(1.0)
    yield "bool_tensor", torch.tensor(True)
    yield "too_large", size
    yield "too_negative", -size - 1
    yield "object", object()
    yield "nan", float("nan")


def bad_index_list(size: int) -> Iterator[tuple[str, Any]]:
    """Bad index collections: each bad scalar inside a list, duplicates, strings, float arrays."""
    for label, v in bad_index(size):
        yield f"list_{label}", [0, v]
    yield "duplicates", [1, 1]
    yield "duplicates_via_negative", [size - 1, -1]
    yield "float_tensor_list", torch.tensor([0.0, 1.0])
    yield "float_numpy_list", np.array([0.0, 1.0])
    yield "nested", [[0, 1]]
    yield "2d_tensor", torch.tensor([[0, 1]])


def good_index(i: int) -> Iterator[tuple[str, Any]]:
    """Spellings of the index ``i`` that must give exactly the result of the plain int."""
    yield "numpy_int", np.int64(i)
    yield "int_tensor", torch.tensor(i)
    yield "list_of_int_tensor", [torch.tensor(i)]
    yield "1d_tensor", torch.tensor([i])
    yield "numpy_array", np.array([i])


def bad_float() -> Iterator[tuple[str, Any]]:
    """Values no float parameter may accept."""
    yield "nan", float("nan")
    yield "inf", float("inf")
    yield "neg_inf", float("-inf")
    yield "nan_tensor", torch.tensor(float("nan"))
    yield "str", "0.5"
    yield "none", None
    yield "bool", True


def bad_count(minimum: int = 1) -> Iterator[tuple[str, Any]]:
    """Values no count (window, chunk size, start position...) may accept."""
    yield "below_minimum", minimum - 1
    yield "negative", -3
    yield "float", 2.5
    yield "integral_float", 4.0
    yield "bool", True
    yield "str", "4"
    yield "nan", float("nan")


def bad_tokens() -> Iterator[tuple[str, Any]]:
    """Token inputs no entry point may accept on a tokenizer-less model with d_vocab=50, n_ctx=64."""
    yield "negative_id", torch.tensor([[1, -1, 2]])
    yield "id_eq_vocab", torch.tensor([[1, D_VOCAB, 2]])
    yield "huge_id", torch.tensor([[1, 10**9]])
    yield "float_ids", torch.tensor([[1.0, 2.0]])
    yield "bool_ids", torch.tensor([[True, False]])
    yield "empty_pos", torch.zeros(1, 0, dtype=torch.long)
    yield "empty_batch", torch.zeros(0, 3, dtype=torch.long)
    yield "3d", torch.ones(1, 2, 3, dtype=torch.long)
    yield "too_long", torch.ones(1, N_CTX + 1, dtype=torch.long)
    yield "text_without_tokenizer", "hello"
    yield "mixed_list", ["a", 1]
    yield "ragged", [[1, 2], [3]]
    yield "none", None
    yield "list_of_floats", [1.5, 2.0]


def bad_model() -> Iterator[tuple[str, Any]]:
    """Models no entry point may accept: not rotary, not a model."""
    yield "not_rotary", lambda: tiny_model(positional_embedding_type="standard")
    yield "not_a_model", lambda: object()


# ---- the table of entry points ---------------------------------------------------------------------------
def _metric(logits):
    return logits[:, -1, 0].mean()


def _iter(model, tokens, layer=0, **kw):
    return list(ri.iter_band_scores(model, tokens, layer, chunk_size=4, **kw))


# (entry point, argument, kind, size, call(model, value))
Entry = tuple[str, str, str, int, Callable[[Any, Any], Any]]
NP = dict(progress=False)

INDEX_ENTRIES: list[Entry] = [
    ("ablate_bands", "bands", "list", N_BANDS, lambda m, v: ri.ablate_bands(m, v)),
    ("ablate_bands", "layers", "list", N_LAYERS, lambda m, v: ri.ablate_bands(m, [0], layers=v)),
    ("ablate_bands", "heads", "list", N_HEADS, lambda m, v: ri.ablate_bands(m, [0], heads=v, target="q")),
    ("ablate_bands", "kv_heads", "list", N_KV, lambda m, v: ri.ablate_bands(m, [0], kv_heads=v, target="k")),
    ("prope", "layers", "list", N_LAYERS, lambda m, v: ri.prope(m, 0.5, layers=v)),
    ("band_scores", "layer", "scalar", N_LAYERS, lambda m, v: ri.band_scores(m, TOKS, v)),
    ("band_scores", "heads", "list", N_HEADS, lambda m, v: ri.band_scores(m, TOKS, 0, heads=v)),
    ("band_scores", "bands", "list", N_BANDS, lambda m, v: ri.band_scores(m, TOKS, 0, bands=v)),
    ("iter_band_scores", "layer", "scalar", N_LAYERS, lambda m, v: _iter(m, TOKS, v)),
    ("iter_band_scores", "heads", "list", N_HEADS, lambda m, v: _iter(m, TOKS, heads=v)),
    ("iter_band_scores", "bands", "list", N_BANDS, lambda m, v: _iter(m, TOKS, bands=v)),
    ("BandStats", "layers", "list", N_LAYERS, lambda m, v: ri.BandStats(m, layers=v)),
    ("BandCapture", "layers", "list", N_LAYERS, lambda m, v: ri.BandCapture(m, layers=v)),
    ("BandCapture", "heads", "list", N_HEADS, lambda m, v: ri.BandCapture(m, heads=v)),
    ("BandCapture", "bands", "list", N_BANDS, lambda m, v: ri.BandCapture(m, bands=v)),
    ("band_hooks", "layers", "list", N_LAYERS, lambda m, v: ri.band_hooks(m, lambda a: None, layers=v)),
    (
        "RotaryBands.to_dataframe",
        "layer",
        "scalar",
        N_LAYERS,
        lambda m, v: ri.RotaryBands.from_model(m).to_dataframe(v),
    ),
    (
        "RotaryBands.band_of_dim",
        "dim",
        "scalar",
        D_HEAD,
        lambda m, v: ri.RotaryBands.from_model(m).band_of_dim(v),
    ),
    (
        "ablation_sweep",
        "layers",
        "list",
        N_LAYERS,
        lambda m, v: ri.ablation_sweep(m, TOKS, _metric, layers=v, **NP),
    ),
    (
        "ablation_sweep",
        "bands",
        "list",
        N_BANDS,
        lambda m, v: ri.ablation_sweep(m, TOKS, _metric, bands=v, **NP),
    ),
    (
        "patch_sweep",
        "layers",
        "list",
        N_LAYERS,
        lambda m, v: ri.patch_sweep(m, TOKS, TOKS + 1, _metric, layers=v, **NP),
    ),
    (
        "patch_sweep",
        "bands",
        "list",
        N_BANDS,
        lambda m, v: ri.patch_sweep(m, TOKS, TOKS + 1, _metric, bands=v, **NP),
    ),
    (
        "direct_effect_sweep",
        "layers",
        "list",
        N_LAYERS,
        lambda m, v: ri.direct_effect_sweep(m, TOKS, layers=v, **NP),
    ),
    (
        "direct_effect_sweep",
        "heads",
        "list",
        N_HEADS,
        lambda m, v: ri.direct_effect_sweep(m, TOKS, heads=v, **NP),
    ),
    (
        "direct_effect_sweep",
        "bands",
        "list",
        N_BANDS,
        lambda m, v: ri.direct_effect_sweep(m, TOKS, bands=v, **NP),
    ),
    *[
        (
            f"analyses.{name}",
            "layers",
            "list",
            N_LAYERS,
            lambda m, v, f=getattr(analyses, name): f(m, TOKS, layers=v, **NP),
        )
        for name in (
            "frequency_usage",
            "positional_heads",
            "sink_channels",
            "offset_features",
            "massive_values",
            "phase_alignment",
            "band_spectra",
            "attention_spectra",
            "mlp_spectra",
        )
    ],
]

FLOAT_ENTRIES: list[Entry] = [
    ("prope", "p", "float", 0, lambda m, v: ri.prope(m, v)),
    ("ablate_bands", "factor", "float", 0, lambda m, v: ri.ablate_bands(m, [0], mode="scale_freq", factor=v)),
    (
        "ablate_bands",
        "delta",
        "float",
        0,
        lambda m, v: ri.ablate_bands(m, [0], mode="shift", target="q", delta=v),
    ),
    (
        "ablate_bands",
        "phase",
        "float",
        0,
        lambda m, v: ri.ablate_bands(m, [0], mode="shift", target="q", phase=v),
    ),
    (
        "analyses.positional_heads",
        "threshold",
        "float",
        0,
        lambda m, v: analyses.positional_heads(m, TOKS, threshold=v, **NP),
    ),
    (
        "analyses.massive_values",
        "lam",
        "float",
        0,
        lambda m, v: analyses.massive_values(m, TOKS, lam=v, **NP),
    ),
    (
        "analyses.offset_features",
        "min_consistency",
        "float",
        0,
        lambda m, v: analyses.offset_features(m, TOKS, min_consistency=v, **NP),
    ),
    (
        "analyses.offset_features",
        "spike",
        "float",
        0,
        lambda m, v: analyses.offset_features(m, TOKS, spike=v, **NP),
    ),
]

COUNT_ENTRIES: list[Entry] = [
    (
        "iter_band_scores",
        "chunk_size",
        "count",
        1,
        lambda m, v: list(ri.iter_band_scores(m, TOKS, 0, chunk_size=v)),
    ),
    ("BandStats", "start_pos", "count", 0, lambda m, v: ri.BandStats(m, start_pos=v)),
    ("RotaryBands.cycles", "context_length", "count", 1, lambda m, v: ri.RotaryBands.from_model(m).cycles(v)),
    *[
        (
            f"analyses.{name}",
            "window",
            "count",
            1,
            lambda m, v, f=getattr(analyses, name): f(m, TOKS, window=v, **NP),
        )
        for name in ("frequency_usage", "sink_channels", "offset_features", "massive_values", "band_spectra")
    ],
    (
        "analyses.frequency_usage",
        "start_pos",
        "count",
        0,
        lambda m, v: analyses.frequency_usage(m, TOKS, start_pos=v, **NP),
    ),
    (
        "analyses.sink_channels",
        "start_pos",
        "count",
        0,
        lambda m, v: analyses.sink_channels(m, TOKS, start_pos=v, **NP),
    ),
]

TOKEN_ENTRIES: list[tuple[str, Callable[[Any, Any], Any]]] = [
    ("band_scores", lambda m, t: ri.band_scores(m, t, 0)),
    ("iter_band_scores", lambda m, t: list(ri.iter_band_scores(m, t, 0))),
    ("BandStats.update", lambda m, t: ri.BandStats(m).update(t)),
    ("ablation_sweep", lambda m, t: ri.ablation_sweep(m, t, _metric, **NP)),
    ("patch_sweep.clean", lambda m, t: ri.patch_sweep(m, t, TOKS, _metric, **NP)),
    ("patch_sweep.corrupted", lambda m, t: ri.patch_sweep(m, TOKS, t, _metric, **NP)),
    ("direct_effect_sweep", lambda m, t: ri.direct_effect_sweep(m, t, **NP)),
    *[
        (f"analyses.{name}", lambda m, t, f=getattr(analyses, name): f(m, t, **NP))
        for name in (
            "frequency_usage",
            "positional_heads",
            "sink_channels",
            "offset_features",
            "massive_values",
        )
    ],
]

MODEL_ENTRIES: list[tuple[str, Callable[[Any], Any]]] = [
    ("ablate_bands", lambda m: ri.ablate_bands(m, [0])),
    ("prope", lambda m: ri.prope(m, 0.5)),
    ("band_scores", lambda m: ri.band_scores(m, TOKS, 0)),
    ("BandStats", lambda m: ri.BandStats(m)),
    ("BandCapture", lambda m: ri.BandCapture(m)),
    ("band_hooks", lambda m: ri.band_hooks(m, lambda a: None)),
    ("RotaryBands", lambda m: ri.RotaryBands.from_model(m)),
    ("direct_effect_sweep", lambda m: ri.direct_effect_sweep(m, TOKS, **NP)),
    ("ablation_sweep", lambda m: ri.ablation_sweep(m, TOKS, _metric, **NP)),
    ("analyses.frequency_usage", lambda m: analyses.frequency_usage(m, TOKS, **NP)),
]

# Cases that fail today in files owned by another area (fixed at merge): id -> owner.
_FLOAT_LABELS = [label for label, _ in bad_float()]
_COUNT_LABELS = [label for label, _ in bad_count()]
_RAW_DATA = ["text_without_tokenizer", "mixed_list", "ragged", "none", "list_of_floats"]
OWNED: dict[str, str] = {}  # every area fixed at merge: no known failures left


def _params(entries: list[Entry], gen: Callable[[Entry], Iterator[tuple[str, Any]]]):
    out = []
    for entry in entries:
        name, arg = entry[0], entry[1]
        for label, value in gen(entry):
            cid = f"{name}-{arg}-{label}"
            marks = []
            if cid in OWNED:
                marks = [pytest.mark.xfail(strict=True, reason=f"owned by {OWNED[cid]}, fixed at merge")]
            out.append(pytest.param(entry[4], value, id=cid, marks=marks))
    return out


def _index_values(entry: Entry):
    _, _, kind, size, _ = entry
    yield from bad_index(size)
    if kind == "list":
        yield from bad_index_list(size)


def _check_raises(fn, model, value):
    with pytest.raises(RopeInterpError) as info:
        fn(model, value)
    msg = str(info.value)
    assert len(msg) > 20, f"the error must say how to fix the call, got {msg!r}"
    return info.value


@pytest.mark.parametrize(("fn", "value"), _params(INDEX_ENTRIES, _index_values))
def test_bad_index_is_refused(model, fn, value):
    _check_raises(fn, model, value)


@pytest.mark.parametrize(("fn", "value"), _params(FLOAT_ENTRIES, lambda e: bad_float()))
def test_bad_float_is_refused(model, fn, value):
    _check_raises(fn, model, value)


@pytest.mark.parametrize(("fn", "value"), _params(COUNT_ENTRIES, lambda e: bad_count(e[3])))
def test_bad_count_is_refused(model, fn, value):
    _check_raises(fn, model, value)


@pytest.mark.parametrize(
    ("fn", "value"),
    _params([(n, "tokens", "tokens", 0, f) for n, f in TOKEN_ENTRIES], lambda e: bad_tokens()),
)
def test_bad_tokens_are_refused(model, fn, value):
    _check_raises(fn, model, value)


@pytest.mark.parametrize(
    ("fn", "value"),
    _params(
        [(n, "model", "model", 0, lambda m, v, f=f: f(v())) for n, f in MODEL_ENTRIES], lambda e: bad_model()
    ),
)
def test_bad_model_is_refused(model, fn, value):
    _check_raises(fn, model, value)


# ---- good spellings give the same result as ints --------------------------------------------------------
GOOD: list[tuple[str, Callable[[Any, Any], Any], int]] = [
    ("ablate_bands.bands", lambda m, v: ri.ablate_bands(m, v).bands, 3),
    ("ablate_bands.layers", lambda m, v: ri.ablate_bands(m, [0], layers=v).layers, 1),
    (
        "band_scores.layer",
        lambda m, v: ri.band_scores(m, TOKS, v if not isinstance(v, list) else v[0]).total(),
        1,
    ),
    ("band_scores.bands", lambda m, v: ri.band_scores(m, TOKS, 0, bands=v).per_band, 5),
    ("BandCapture.heads", lambda m, v: ri.BandCapture(m, heads=v).heads, 2),
    ("RotaryBands.to_dataframe", lambda m, v: ri.RotaryBands.from_model(m).to_dataframe(v).values, 1),
]


@pytest.mark.parametrize(("fn", "i"), [pytest.param(f, i, id=n) for n, f, i in GOOD])
@pytest.mark.parametrize(
    "spelling", ["numpy_int", "int_tensor", "list_of_int_tensor", "1d_tensor", "numpy_array"]
)
def test_integer_spellings_give_the_int_result(model, fn, i, spelling):
    value = dict(good_index(i))[spelling]
    scalar_only = fn in (GOOD[2][1], GOOD[5][1])
    if scalar_only and spelling in ("list_of_int_tensor", "1d_tensor", "numpy_array"):
        value = np.int64(i) if spelling == "numpy_array" else torch.tensor(i)
    want = fn(model, i if scalar_only else [i])
    got = fn(model, value)
    if isinstance(want, torch.Tensor):
        assert torch.allclose(got, want, atol=1e-6)
    elif isinstance(want, np.ndarray):
        assert np.allclose(got, want)
    else:
        assert got == want


# ---- regression tests, one per kind of silent wrong result this area guards against -----------------------
def test_indices_are_never_truncated_or_counted_twice(model):
    with pytest.raises(LayerError, match="integer"):
        ri.ablate_bands(model, [1.5])
    with pytest.raises(LayerError, match="integer"):
        ri.ablate_bands(model, True)
    with pytest.raises(LayerError, match="string"):
        ri.ablate_bands(model, "12")
    with pytest.raises(LayerError, match="single layer"):
        ri.band_scores(model, TOKS, "10")
    with pytest.raises(LayerError, match="more than once"):
        ri.band_scores(model, TOKS, 0, bands=[1, 1])
    # a selection in any order keeps the identity total() == full scores
    full = ri.band_scores(model, TOKS, 0).total()
    some = ri.band_scores(model, TOKS, 0, bands=[5, 1, -1])
    assert some.bands == [5, 1, 7]
    assert torch.allclose(some.total(), full, atol=1e-5)


def test_token_ids_outside_the_vocabulary(model):
    for bad in ([[1, -1]], [[1, D_VOCAB]]):
        for entry in (ri.band_scores, lambda m, t: ri.BandStats(m).update(t)):
            with pytest.raises(TokenError, match=r"outside the model's vocabulary 0\.\.49"):
                entry(model, torch.tensor(bad)) if entry is not ri.band_scores else entry(
                    model, torch.tensor(bad), 0
                )


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """A tiny HF Llama with a word-level tokenizer (right padding), loaded with load_model."""
    from rope_interp.model.testing import tiny_hf_dir

    return ri.load_model(str(tiny_hf_dir(tmp_path_factory.mktemp("tiny") / "tiny-llama")))


@pytest.mark.parametrize("side", ["right", "left"])
def test_bandstats_over_padded_strings_equals_each_string_alone(hf_model, side):
    texts = ["the king", "the capital of france is paris and the old city of rome is in italy"]
    old = hf_model.tokenizer.padding_side
    hf_model.tokenizer.padding_side = side
    try:
        batch = ri.BandStats(hf_model).update(texts)
        alone = ri.BandStats(hf_model).update(texts[0]).merge(ri.BandStats(hf_model).update(texts[1]))
    finally:
        hf_model.tokenizer.padding_side = old
    n_real = sum(hf_model.to_tokens(t).shape[1] for t in texts)
    assert batch.n_tokens == alone.n_tokens == n_real
    for site in batch.sites:
        for stat in ("mean_norm", "mean_vector", "second_moment"):
            assert torch.allclose(
                getattr(batch, stat)(site), getattr(alone, stat)(site), rtol=1e-4, atol=1e-5
            ), (
                site,
                stat,
            )


def test_padded_strings_are_refused_where_no_mask_is_honoured(hf_model):
    with pytest.raises(PaddingError, match="different lengths"):
        ri.band_scores(hf_model, ["the king", "the old city of rome"], 0)
    # equal lengths are not padded: accepted
    assert ri.band_scores(hf_model, ["the king", "the queen"], 0).per_band.shape[0] == 2
    with pytest.raises(ParameterError, match="bool"):
        ri.BandStats(hf_model).update(hf_model.to_tokens("the king"), mask=torch.ones(1, 3))


def test_merge_checks_the_full_layout(model):
    base = ri.BandStats(model).update(TOKS)
    mismatches = {
        "heads": ri.BandStats(tiny_model(n_heads=2, n_key_value_heads=1)),
        "bands": ri.BandStats(tiny_model(d_head=8)),
        "layers": ri.BandStats(model, layers=[0]),
        "sites": ri.BandStats(model, sites=["rot_q"]),
        "start_pos": ri.BandStats(model, start_pos=1),
        "dtype": ri.BandStats(tiny_model().to(torch.float64)),
        "frequencies": ri.BandStats(tiny_model(rotary_base=500)),
    }
    for what, other in mismatches.items():
        with pytest.raises(MergeError, match="different layout") as info:
            base.merge(other.update(TOKS))
        assert what.rstrip("s") in str(info.value) or what == "dtype" and "dtype" in str(info.value), (
            what,
            info.value,
        )
    with pytest.raises(MergeError, match="BandStats"):
        base.merge({"sum": 1})
    assert base.n_tokens == TOKS.numel()  # nothing was added by the refused merges


def _q_bands_used_by_scores(model, hookset, layer=0):
    """The rotated query bands that the attention scores of ``layer`` are computed from."""
    from rope_interp.bands import band_view

    seen = {}
    first = [(f"blocks.{layer}.attn.hook_rot_q", lambda a, hook: seen.__setitem__("q", a))]
    last = [
        (f"blocks.{layer}.attn.hook_attn_scores", lambda a, hook: seen.__setitem__("used", seen["q"].clone()))
    ]
    model.run_with_hooks(TOKS, fwd_hooks=first + hookset.fwd_hooks() + last)
    return band_view(seen["used"], D_HEAD, False)[0]  # [pos, head, band, 2]


def test_composition_order_holds_for_q_modes_at_hook_rot_k(model):
    """``no_rotation + mean``: un-rotate first, then replace by the mean (one vector at every position)."""
    un = ri.ablate_bands(model, [6, 7], layers=0, target="q", mode="no_rotation")
    mean = ri.ablate_bands(model, [6, 7], layers=0, target="q", mode="mean")
    q = _q_bands_used_by_scores(model, un + mean)[:, :, 6:8]
    assert torch.allclose(q, q[:1].expand_as(q), atol=1e-5)  # the mean acted last
    q = _q_bands_used_by_scores(model, mean + un)[:, :, 6:8]
    assert not torch.allclose(q, q[:1].expand_as(q), atol=1e-3)  # un-rotated after the mean: varies
    # the composed context gives the same logits as the explicit fwd_hooks list
    with un + mean:
        inside = model(TOKS)
    assert torch.allclose(inside, model.run_with_hooks(TOKS, fwd_hooks=(un + mean).fwd_hooks()))


def test_non_lifo_exit_raises_and_leaves_the_model_clean(model):
    a, b = ri.ablate_bands(model, [0]), ri.ablate_bands(model, [1])
    a.__enter__()
    b.__enter__()
    with pytest.raises(HookStateError, match="reverse order"):
        a.__exit__(None, None, None)
    b.__exit__(None, None, None)
    a.__exit__(None, None, None)
    assert sum(len(hp.fwd_hooks) for hp in model.hook_dict.values()) == 0
    assert torch.allclose(model(TOKS), tiny_model()(TOKS))


def test_second_thread_entering_a_hooked_model_raises(model):
    errors = []
    with ri.ablate_bands(model, [0]):

        def other():
            try:
                with ri.ablate_bands(model, [1]):
                    pass
            except HookStateError as err:
                errors.append(err)

        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(errors) == 1 and "another thread" in str(errors[0])
    with ri.ablate_bands(model, [1]):  # after the first context closed, any thread may enter
        pass


@pytest.mark.parametrize("tier", ["attribution_sweep", "qk_attribution_sweep"])
def test_attribution_tiers_refuse_a_model_hooked_by_another_thread(model, tier):
    # the gradient tiers attached hooks with model.hooks(...) and so measured the other thread's ablation
    from rope_interp.sweep.metrics import logit_diff

    fn = getattr(ri, tier)
    clean = fn(model, TOKS, logit_diff(1, 2), layers=[0], progress=False)
    entered, release, errors = threading.Event(), threading.Event(), []

    def hold():
        with ri.ablate_bands(model, list(range(8)), layers=[0, 1]):
            entered.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert entered.wait(30)
        try:
            fn(model, TOKS, logit_diff(1, 2), layers=[0], progress=False)
        except HookStateError as err:
            errors.append(err)
    finally:
        release.set()
        t.join(30)
    assert not t.is_alive()
    assert len(errors) == 1 and "another thread" in str(errors[0])
    # once the other thread's context closed, the tier runs and measures the clean model again
    again = fn(model, TOKS, logit_diff(1, 2), layers=[0], progress=False)
    assert torch.equal(again.values, clean.values)


def test_composing_different_models_is_an_error(model):
    with pytest.raises(RopeInterpError, match="different models"):
        ri.ablate_bands(model, [0]) + ri.ablate_bands(tiny_model(), [0])
    with pytest.raises(NotRotaryError):
        ri.BandStats(tiny_model(positional_embedding_type="standard"))


# ---- the CLI: every subcommand, every bad option value it has --------------------------------------------
CLI_BAD: dict[str, list[list[str]]] = {
    "--layers": [["99"], ["-99"], ["0", "0"], ["1.5"], []],  # []: the bare flag, an empty selection
    "--bands": [["99"], ["1", "1"], ["x"], []],
    "--device": [["tpu"], ["cuda:x"]],
    "--layer": [["99"], ["-99"]],
    "--max-tokens": [["-5"], ["0"]],
    "--window": [["0"], ["-3"]],
    "--context": [["0"], ["-1"]],
    "--threshold": [["nan"], ["inf"]],
    "--lam": [["nan"], ["-1"]],
    "--min-consistency": [["nan"]],
    "--spike": [["inf"]],
    "--batch-size": [["0"], ["-2"]],
    "--top": [["0"], ["-1"]],
    "--n-control": [["-1"]],
    "--ablate-k": [["-1"]],
    "--causal-windows": [["-1"]],
    "--spectra-layers": [["99"], []],
}
CLI_OWNED: dict[str, str] = {}  # every area fixed at merge: no known failures left


def _cli_cases():
    from rope_interp.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for cmd, parser in sorted(sub.choices.items()):
        opts = {o for a in parser._actions for o in a.option_strings}
        for opt, values in CLI_BAD.items():
            if opt not in opts:
                continue
            for v in values:
                cid = f"{cmd}{opt}={','.join(v)}"
                marks = []
                if cid in CLI_OWNED:
                    marks = [
                        pytest.mark.xfail(strict=True, reason=f"owned by {CLI_OWNED[cid]}, fixed at merge")
                    ]
                yield pytest.param(cmd, [opt, *v], id=cid, marks=marks)


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory, hf_model):
    """(model, text file): a tiny HF Llama with a tokenizer, and a short text it can read."""
    d = tmp_path_factory.mktemp("cli")
    text = d / "text.txt"
    text.write_text(
        "The capital of France is Paris. The capital of Italy is Rome, an old city on a river. " * 3
    )
    return hf_model, text


@pytest.mark.parametrize(("cmd", "bad"), list(_cli_cases()))
def test_cli_bad_option_is_a_nonzero_exit_with_one_line(cli_env, cmd, bad, tmp_path, monkeypatch, capsys):
    import rope_interp.model.load as models
    from rope_interp.cli import main

    model, text = cli_env
    monkeypatch.setattr(models, "load_model", lambda *a, **k: model)  # one tiny model for every case
    extra = (
        ["--clean", "the capital of france is", "--corrupted", "the capital of italy is"]
        if cmd == "patch"
        else []
    )
    extra += ["--answer", " paris", "--wrong", " rome"] if cmd == "patch" else []
    extra += ["--quick"] if cmd == "report" else []
    extra += ["--no-progress"] if cmd not in ("bands", "summary") else []
    argv = [cmd, "--model", "tiny", "--text", str(text), "--out", str(tmp_path / "out"), *extra, *bad]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse: usage line + error line
        assert exit_.code not in (0, None), f"{argv} exited with {exit_.code}"
        assert "error" in capsys.readouterr().err
        return
    err = capsys.readouterr().err.strip()
    assert code != 0, f"{argv} returned 0 (accepted a bad value)"
    assert err.count("\n") == 0 and "error" in err and "Traceback" not in err, err
    out = tmp_path / "out"
    written = sorted(p.name for p in out.rglob("*")) if out.exists() else []
    assert not written, f"{argv} wrote {written} before refusing a bad option (validate before any work)"


# ---- saved specs: every field of SweepSpec.from_dict, refused before any model exists ---------------------
_GOOD_MODEL = {"name": "m", "config": "c", "weights": "w", "dtype": "float32", "transformer_lens": "3.9.0",
               "transformers": None}  # fmt: skip
SPEC_FIELD_BAD: dict[str, list[Any]] = {
    "metric": [{"name": "acc"}, "loss", {"name": "loss", "pos": 1}, {"name": "logit_diff", "answer": 1},
               {"name": "logit_diff", "answer": 1.5, "wrong": 2}, {"name": "logit_diff", "answer": 1, "wrong": -3},
               {"name": "logit_diff", "answer": 1, "wrong": 2, "pos": "last"}],
    "tokens": [[], [[]], [1, 2], [[1, 2], [3]], [[1.0, 2]], [[True, 2]], [[-1, 2]], [["a"]], "1 2", {"0": [1]}],
    "text": ["", "  ", 5, ["a"]],
    "clean_tokens": [[], [[1, 2], [3]], [[0.5]], 7],
    "clean_text": ["", 3],
    "per": [[], ["band", "band"], ["layer", "time"], "layer", [1], None],
    "method": ["fast", 1, None],
    "mode": ["erase", 0],
    "params": [[1], "delta", {"colour": 1}, {1: 2}],
    "target": ["v", 1],
    "layers": [[], [1.5], [0, 0], "0", 1, [True]],
    "heads": [[], [0.5], [1, 1]],
    "bands": [[], ["x"], [2, 2], 2.0],
    "positions": [[], [1.0]],
    "options": [[], {"source": [[1, 2]]}, {"progress": True}, {"batch_size": 0}, {"max_batch_tokens": 1.5},
                {"layers": [0]}],
    "model": ["smollm2", {"name": "m"}, {**_GOOD_MODEL, "extra": 1}, {**_GOOD_MODEL, "weights": 5},
              {**_GOOD_MODEL, "transformers": 4}],
}  # fmt: skip


def _spec_cases():
    from dataclasses import fields

    for f in fields(ri.SweepSpec):
        for i, v in enumerate(SPEC_FIELD_BAD.get(f.name, [])):
            d: dict[str, Any] = {"tokens": [[1, 2, 3]], f.name: v}
            if f.name == "text":
                d.pop("tokens")
            yield pytest.param(d, id=f"{f.name}-{i}")
    yield pytest.param({}, id="missing-tokens-and-text")
    yield pytest.param({"tokens": [[1, 2]], "text": "a b"}, id="both-tokens-and-text")
    yield pytest.param({"tokens": [[1, 2]], "clean_tokens": [[1, 2]], "clean_text": "a"}, id="both-clean")
    yield pytest.param({"tokens": [[1, 2]], "clean_tokens": [[1, 2]], "mode": "zero"}, id="patch-with-mode")
    yield pytest.param({"tokens": [[1, 2]], "mode": "shift"}, id="shift-without-delta")
    yield pytest.param({"tokens": [[1, 2]], "colour": "red"}, id="extra-key")
    yield pytest.param([["tokens", [[1]]]], id="not-an-object")


def test_every_spec_field_has_bad_values():
    from dataclasses import fields

    assert {f.name for f in fields(ri.SweepSpec)} == set(SPEC_FIELD_BAD), "a new field needs bad values here"


@pytest.mark.parametrize("d", list(_spec_cases()))
def test_bad_spec_field_is_refused_by_from_dict(d):
    with pytest.raises(RopeInterpError):  # never TypeError/IndexError/AssertionError later, in a forward
        ri.SweepSpec.from_dict(d)


def test_good_spec_fields_are_accepted():
    d = {"tokens": [[1, 2, 3]], "per": ["layer", "head", "band"], "method": "refine", "mode": "shift",
         "params": {"delta": 2}, "target": "k", "layers": [0], "heads": [1], "bands": [0, 3],
         "options": {"top": 2, "batch_size": None, "estimate": "attribution"}, "model": _GOOD_MODEL,
         "metric": {"name": "logit_diff", "answer": " Paris", "wrong": 7, "pos": -1}}  # fmt: skip
    spec = ri.SweepSpec.from_dict(d)
    assert ri.SweepSpec.from_dict(spec.to_dict()) == spec


# ---- empty selections in the Python sweep API, and devices ---------------------------------------------
@pytest.mark.parametrize("method", ["naive", "exact", "attribution", "qk_attribution", "refine"])
@pytest.mark.parametrize("axis", ["layers", "heads", "bands", "positions"])
def test_empty_selection_is_refused_by_every_tier(model, method, axis):
    per = {"heads": ("layer", "head", "band"), "positions": ("layer", "band", "pos")}.get(
        axis, ("layer", "band")
    )
    from rope_interp.sweep.metrics import loss_metric

    # before: layers=[] returned a [0, n_bands] grid, heads=[] died in torch.meshgrid
    with pytest.raises(ParameterError, match=f"{axis}= is empty"):
        ri.run_sweep(model, TOKS, loss_metric(TOKS), per, method, progress=False, **{axis: []})


@pytest.mark.parametrize("bad", ["tpu", "cuda:x", 3, "cuda", "cuda:7", "mps"])
def test_bad_device_is_refused(monkeypatch, bad):
    from rope_interp.validate import device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ParameterError):
        device(bad)


# ---- analyses: degenerate inputs refused before work (issue 22, items 8 and 14) --------------------------
@pytest.mark.parametrize(
    "case",
    [
        "causal_alignment_one_token",
        "induction_no_layers",
        "carrier_survey_text_without_tokenizer",
        "induction_one_token_repeated",
        "positional_heads_no_layers",
    ],
)
def test_degenerate_analysis_inputs_are_refused(model, case):
    from rope_interp.errors import ContextLengthError

    calls = {
        "causal_alignment_one_token": (
            ContextLengthError,
            lambda: analyses.causal_alignment(model, torch.tensor([[5]]), layer=0, head=0, progress=False),
        ),
        "induction_no_layers": (LayerError, lambda: analyses.induction_heads(model, n=8, batch=2, layers=[])),
        "carrier_survey_text_without_tokenizer": (
            TokenError,
            lambda: analyses.carrier_survey(model, "text", n_pos=16, progress=False),
        ),
        "induction_one_token_repeated": (
            TokenError,
            lambda: analyses.induction_heads(model, tokens=torch.tensor([[1] + [7] * 8 + [7] * 8])),
        ),
        "positional_heads_two_tokens": (
            ContextLengthError,
            lambda: analyses.positional_heads(model, torch.tensor([[5, 6]]), ablate_k=None, progress=False),
        ),
        "positional_heads_no_layers": (
            LayerError,
            lambda: analyses.positional_heads(model, torch.arange(1, 20)[None], layers=[], progress=False),
        ),
    }
    err, call = calls[case]
    with pytest.raises(err):
        call()
