"""Repository-wide pytest hooks (tests/ and the doctests of rope_interp/); fixtures live in tests/conftest.py."""

from __future__ import annotations

import doctest

import pytest

from rope_interp.model.compat import NO_HOOKED, has_hooked_transformer

HOOKED = has_hooked_transformer()  # False on TransformerLens 4 (bridge only)
NO_HOOKED_REASON = "needs HookedTransformer, which TransformerLens 4 removed (bridge-only set)"


# Tests that need HookedTransformer where no exception says so in this process: the torchrun ranks and
# scripts they start build tiny HookedTransformers (their failure reaches the test as an exit code), and
# the pyright check is of the TransformerLens 3 set (TL 4's stubs lack the HookedTransformer names).
HOOKED_ONLY = {
    "tests/test_distributed.py": "its torchrun ranks build tiny HookedTransformers",
    "tests/test_scripts.py::test_bench_distributed_tiny": "bench_distributed.py builds a tiny HookedTransformer",
    "tests/test_load.py::test_local_hf_directory_matches_transformers": "a directory without tokenizer files "
    "loads only as a HookedTransformer (a bridge needs a tokenizer)",
    "tests/test_load.py::test_local_dir_named_llama_is_read_from_its_own_config": "a directory without "
    "tokenizer files loads only as a HookedTransformer (a bridge needs a tokenizer)",
    "tests/test_types.py": "the type check is of the TransformerLens 3 set (pyright on TL 4 sees no HookedTransformer)",
}


def pytest_configure(config):
    config.addinivalue_line("markers", "hooked: needs HookedTransformer (skipped on TransformerLens 4)")


def pytest_collection_modifyitems(config, items):
    """On TransformerLens 4, skip the tests marked ``hooked`` (a HookedTransformer row or fixture, by design)."""
    if HOOKED:
        return
    skip = pytest.mark.skip(reason=NO_HOOKED_REASON)
    for item in items:
        why = next(
            (w for k, w in HOOKED_ONLY.items() if item.nodeid == k or item.nodeid.startswith(k + "::")), None
        )
        if why is not None:
            item.add_marker(pytest.mark.skip(reason=f"{NO_HOOKED_REASON}: {why}"))
        elif "hooked" in item.keywords:
            item.add_marker(skip)


def _needs_hooked(excinfo) -> str | None:
    """The reason to skip, when a test failed only because this TransformerLens has no HookedTransformer.

    That is TransformerLens 4's own ImportError for a removed name, or rope_interp's ModelNotAvailableError
    with ``compat.NO_HOOKED`` (``compat.hooked_classes``, ``load_model(..., bridge=False)``); anything
    else, another ModelNotAvailableError included, stays a failure.
    """
    err = excinfo.value
    failures = getattr(
        err, "failures", None
    )  # pytest's MultipleDoctestFailures (--doctest-continue-on-failure)
    if failures:
        err = failures[0]
    if isinstance(err, doctest.DocTestFailure):  # an example that expected another error got ours
        return f"{NO_HOOKED_REASON}: {NO_HOOKED[:120]}" if NO_HOOKED in err.got else None
    if isinstance(err, doctest.UnexpectedException):
        err = err.exc_info[1]
    if isinstance(err, ImportError) and (
        NO_HOOKED in str(err) or "removed in TransformerLens 4.0" in str(err)
    ):
        return f"{NO_HOOKED_REASON}: {str(err)[:160]}"
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On TransformerLens 4, report HookedTransformer-only tests (and fixtures, doctests) as skipped, with why.

    The one place this is decided: a test is skipped only when it actually reached for HookedTransformer.
    """
    outcome = yield
    if HOOKED or call.excinfo is None:
        return
    reason = _needs_hooked(call.excinfo)
    if reason is not None:
        rep = outcome.get_result()
        rep.outcome = "skipped"
        rep.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {reason}")
