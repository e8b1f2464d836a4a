"""The model adapter: one kind per model, and text longer than the context refused on every path (never cut)."""

from __future__ import annotations

import pytest

import rope_interp as ri
from rope_interp.errors import ContextLengthError
from rope_interp.model import adapter
from rope_interp.model.testing import tiny_hf_dir
from rope_interp.sweep.spec import SweepSpec


@pytest.fixture(scope="module")
def hooked(tmp_path_factory):
    return ri.load_model(str(tiny_hf_dir(tmp_path_factory.mktemp("m") / "tiny", n_ctx=32)))


LONG = " ".join(["the capital of france is paris"] * 10)  # 61 tokens with BOS, n_ctx = 32


def test_a_long_text_is_refused_not_cut(hooked):
    assert (
        int(hooked.to_tokens(LONG, truncate=False).shape[1]) > 32
    )  # TransformerLens alone would cut it to 32
    assert int(hooked.to_tokens(LONG).shape[1]) == 32
    calls = {
        "tokens_and_mask": lambda: adapter.tokens_and_mask(hooked, LONG),
        "band_scores": lambda: ri.band_scores(hooked, LONG, 0),
        "BandStats.update": lambda: ri.BandStats(hooked).update(LONG),
        "a batch of texts": lambda: adapter.tokens_and_mask(hooked, ["the capital", LONG]),
        "exact_sweep": lambda: ri.exact_sweep(hooked, LONG, ri.logit_diff(1, 2), progress=False),
        "PatternDistance.reference": lambda: ri.PatternDistance.reference(hooked, LONG, 0),
    }
    for name, call in calls.items():
        with pytest.raises(ContextLengthError, match="exceed the model's context of n_ctx=32"):
            call()
            pytest.fail(f"{name} accepted a text longer than the context")


def test_a_spec_with_a_long_text_is_refused(hooked):
    from_ids = SweepSpec(tokens=hooked.to_tokens(LONG, truncate=False).tolist(), metric={"name": "loss"})
    from_text = SweepSpec(text=LONG, metric={"name": "loss"})  # was read as its first n_ctx tokens
    for spec in (from_ids, from_text):
        with pytest.raises(ContextLengthError):
            spec.run(hooked, progress=False)


def test_short_texts_are_unchanged(hooked):
    toks, mask = adapter.tokens_and_mask(hooked, "the capital of france is paris")
    assert toks.tolist() == hooked.to_tokens("the capital of france is paris").tolist() and mask is None
    assert ri.band_scores(hooked, "the capital of france", 0).per_band.shape[-1] == 5  # BOS + 4 words


@pytest.mark.hooked
def test_the_kind_is_chosen_once_per_model(hooked):
    a = adapter.of(hooked)
    assert a is adapter.of(hooked) and type(a).__name__ == "HookedAdapter" and not adapter.is_bridge(hooked)
