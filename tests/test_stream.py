"""The fused engine and the registry: one shared pass gives what each analysis gives alone.

Tolerance: hooks only read activations, so the fused forward computes the very same
numbers as a separate one; tables are compared with ``rtol=1e-5, atol=1e-6`` (float
reductions may be scheduled differently across runs).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from rope_interp.analyses import registry
from rope_interp.analyses.registry import Analysis, Option, analyses
from rope_interp.analyses.stream import Accumulator, run_pass
from rope_interp.model.hooks import attn_hook
from rope_interp.model.testing import tiny_layout_model

FAST_OPTIONS = {"heads": {"causal_windows": 1}, "massive": {"n_control": 1}}


def _assert_tables_equal(a: dict, b: dict, where: str) -> None:
    assert a.keys() == b.keys(), where
    for name in a:
        x, y = a[name], b[name]
        assert list(x.columns) == list(y.columns), (where, name)
        assert len(x) == len(y), (where, name)
        for col in x.columns:
            if pd.api.types.is_numeric_dtype(x[col]) and not pd.api.types.is_bool_dtype(x[col]):
                np.testing.assert_allclose(
                    x[col].to_numpy(float),
                    y[col].to_numpy(float),
                    rtol=1e-5,
                    atol=1e-6,
                    err_msg=f"{where} {name}.{col}",
                )
            else:
                assert x[col].tolist() == y[col].tolist(), (where, name, col)


def _options(name: str) -> dict:
    a = registry.get(name)
    return {k: v for k, v in FAST_OPTIONS.get(name, {}).items() if any(o.name == k for o in a.options)}


@pytest.mark.parametrize("layout", ["neox", "gptj", "partial_gptj", "gqa", "local_global"])
def test_fused_pass_equals_each_analysis_alone(layout):
    model = tiny_layout_model(layout)
    tokens = torch.randint(0, 50, (1, 100), generator=torch.Generator().manual_seed(1))
    names = [a.name for a in analyses()]
    fused = registry.run(model, tokens, {n: _options(n) for n in names}, window=50, progress=False)
    for n in names:
        alone = registry.run(model, tokens, {n: _options(n)}, window=50, progress=False)[n]
        a = registry.get(n)
        _assert_tables_equal(a.tables(fused[n]), a.tables(alone), f"{layout}/{n}")
        assert a.summary(fused[n]) == a.summary(alone), f"{layout}/{n}"


def test_fused_pass_runs_one_forward_per_window():
    model = tiny_layout_model("neox")
    calls = []
    model.blocks[0].attn.hook_pattern.add_hook(lambda x, hook: calls.append(1))
    try:
        accs = [
            a
            for x in analyses()
            for a in x.start(registry.RunContext(model, None), x.options_with(_options(x.name)))
        ]
        assert len(accs) >= 5
        n = run_pass(model, torch.randint(0, 50, (1, 60)), accs, window=20, progress=False)
    finally:
        model.reset_hooks()
    assert n == 3 and len(calls) == 3


@pytest.mark.parametrize("layout", ["neox", "gqa"])
def test_accumulators_merge_to_the_whole(layout):
    """Sums over two halves of the windows, merged, equal the sums over all of them (the scale-out path)."""
    model = tiny_layout_model(layout)
    windows = [torch.randint(0, 50, (1, 40), generator=torch.Generator().manual_seed(s)) for s in range(4)]
    ctx = registry.RunContext(model, None)
    for a in analyses():
        opts = a.options_with(_options(a.name))
        whole, left, right = a.start(ctx, opts), a.start(ctx, opts), a.start(ctx, opts)
        if not whole:
            continue
        run_pass(model, windows, whole, progress=False)
        run_pass(model, windows[:2], left, progress=False)
        run_pass(model, windows[2:], right, progress=False)
        merged = [x.merge(y) for x, y in zip(left, right, strict=True)]
        for w, m in zip(whole, merged, strict=True):
            rw, rm = w.finalize(), m.finalize()
            t = lambda r: {"t": r.to_dataframe()}  # noqa: E731
            _assert_tables_equal(t(rw), t(rm), f"{layout}/{a.name} merge")


# ---- an analysis registered from this test module ----------------------------------------------------------
class _BosAccumulator(Accumulator):
    def __init__(self, model, layers):
        self.layers = layers
        self.total = torch.zeros(())
        self.n = 0

    def fwd_hooks(self):
        def hook(p, hook):
            self.total += p[:, :, 1:, 0].double().sum()
            self.n += p[:, :, 1:, 0].numel()
            return p

        return [(attn_hook(layer, "pattern"), hook) for layer in self.layers]

    def merge(self, other):
        self.total += other.total
        self.n += other.n
        return self

    def finalize(self):
        return float(self.total / self.n)


def _bos_analysis() -> Analysis:
    def section(r):
        return [(None, f"<p>mean BOS attention {r:.4f}</p>")]

    return Analysis(
        name="bosmean",
        title="Mean BOS attention (test analysis)",
        help="Mean attention on the first token (registered by a test)",
        description="Mean attention every query after the first puts on the first token.",
        start=lambda ctx, opts: [_BosAccumulator(ctx.model, [opts["layer"]])],
        finish=lambda ctx, opts, accs: accs[0].finalize(),
        options=(Option("layer", int, 0, "layer to read", minimum=0),),
        summary=lambda r: {"bos_attention": r},
        summary_doc={"bos_attention": "mean attention on the first token"},
        findings=lambda r: [f"Test analysis: mean BOS attention {r:.4f}."],
        tables=lambda r: {"bosmean": pd.DataFrame({"bos_attention": [r]})},
        section=section,
    )


def test_registered_analysis_appears_in_cli_and_report(tmp_path, monkeypatch, capsys):
    import json

    from rope_interp import cli
    from rope_interp.analyses.report import ReportConfig, build_report, validate_summary
    from rope_interp.cli import commands

    model = tiny_layout_model("neox")
    tokens = torch.randint(0, 50, (1, 40), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(commands, "load_from_args", lambda args: model)
    monkeypatch.setattr(commands, "tokens_from_args", lambda m, args, windowed=False: tokens)
    with registry.registered(_bos_analysis()):
        with pytest.raises(SystemExit):
            cli.main(["--help"])
        assert "bosmean" in capsys.readouterr().out
        assert (
            cli.main(
                ["bosmean", "--layer", "1", "--window", "40", "--no-progress", "--out", str(tmp_path / "c")]
            )
            == 0
        )
        saved = json.loads((tmp_path / "c" / "bosmean.json").read_text())
        assert 0 < saved["bos_attention"] < 1
        assert (tmp_path / "c" / "bosmean.csv").is_file()
        cfg = ReportConfig(
            window=40, progress=False, sections=("bands", "bosmean"), options={"bosmean": {"layer": 1}}
        )
        build_report(model, tokens, tmp_path / "r", cfg)
        page = (tmp_path / "r" / "report.html").read_text()
        assert "Mean BOS attention (test analysis)" in page and "Test analysis: mean BOS attention" in page
        summary = json.loads((tmp_path / "r" / "summary.json").read_text())
        validate_summary(summary)
        assert summary["analyses"]["bosmean"]["bos_attention"] == pytest.approx(
            saved["bos_attention"], abs=1e-9
        )
    assert "bosmean" not in [a.name for a in analyses()]


def test_options_are_validated_before_any_forward():
    from rope_interp.errors import ParameterError

    model = tiny_layout_model("neox")
    with pytest.raises(ParameterError, match="threshold must be a number"):
        registry.run(
            model, torch.zeros(1, 8, dtype=torch.long), {"heads": {"threshold": "high"}}, progress=False
        )
    with pytest.raises(ParameterError, match="no option"):
        registry.run(model, torch.zeros(1, 8, dtype=torch.long), {"usage": {"lam": 3.0}}, progress=False)
    with pytest.raises(ParameterError, match="must be one of"):
        registry.run(
            model, torch.zeros(1, 8, dtype=torch.long), {"spectrum": {"parts": ["fft"]}}, progress=False
        )
    with pytest.raises(ParameterError, match="finite"):
        registry.run(
            model, torch.zeros(1, 8, dtype=torch.long), {"massive": {"lam": float("nan")}}, progress=False
        )


@pytest.mark.parametrize("layout", ["neox", "gqa", "partial_gptj"])
def test_spectra_accumulators_equal_the_public_functions(layout):
    """The shared-pass forms of spectral.py's four measures give what its public functions give."""
    from rope_interp.analyses import spectral

    model = tiny_layout_model(layout)
    tokens = torch.randint(0, 50, (1, 100), generator=torch.Generator().manual_seed(3))
    fused = registry.run(model, tokens, {"spectrum": {"spectra_layers": [0, 1]}}, window=50, progress=False)
    for part, fn in spectral.FUNCTIONS.items():
        alone = fn(model, tokens, layers=[0, 1], window=50, progress=False)
        got = fused["spectrum"].parts[part]
        _assert_tables_equal({"t": got.to_dataframe()}, {"t": alone.to_dataframe()}, f"{layout}/{part}")
    assert isinstance(fused["spectrum"].parts["attention"], spectral.AttentionSpectra)


@pytest.mark.slow
def test_fused_pass_equals_each_analysis_alone_on_smollm2(smol, english_tokens):
    tokens = english_tokens[:, :300]
    layers = [0, 1, 15, 29]
    opts = {"heads": {"causal_windows": 1, "ablate_k": 2}, "massive": {"n_control": 1}}
    names = [a.name for a in analyses()]
    fused = registry.run(
        smol, tokens, {n: opts.get(n, {}) for n in names}, layers=layers, window=150, progress=False
    )
    for n in names:
        alone = registry.run(smol, tokens, {n: opts.get(n, {})}, layers=layers, window=150, progress=False)[n]
        a = registry.get(n)
        _assert_tables_equal(a.tables(fused[n]), a.tables(alone), f"smollm2/{n}")
    assert fused["heads"].found(), "SmolLM2 has positional heads in these layers"


def test_massive_baseline_loss_from_the_shared_pass_equals_its_own_forward():
    from rope_interp.analyses.massive import massive_ablation

    model = tiny_layout_model("gqa")
    tokens = torch.randint(0, 50, (1, 90), generator=torch.Generator().manual_seed(5))
    r = registry.run(model, tokens, {"massive": {"lam": 1.3, "n_control": 1}}, window=30, progress=False)[
        "massive"
    ]
    assert r.ablation is not None and r.ablation.n_dims > 0
    ref = massive_ablation(model, tokens, r.values, n_control=1, window=30, progress=False)
    assert abs(r.ablation.baseline - ref.baseline) < 1e-6
    assert abs(r.ablation.massive - ref.massive) < 1e-6 and r.ablation.control == pytest.approx(
        ref.control, abs=1e-6
    )
