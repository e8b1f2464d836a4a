"""circuitsvis views: the numbers they carry, cropping, offline HTML, and a headless-Chromium render."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
import torch

from rope_interp import band_scores
from rope_interp.errors import RopeInterpError
from rope_interp.model.hooks import HookSet, attn_hook
from rope_interp.model.layout import RotaryBands
from rope_interp.model.testing import tiny_layout_model, tiny_model
from rope_interp.read.capture import band_hooks
from rope_interp.view.panels import (
    CroppedViewWarning,
    ablation_view,
    attention_diff,
    band_contribution_view,
    band_norm_tokens,
    circuitsvis_bundle,
    html_page,
    layer_band_norms,
    layer_band_view,
    save_html_page,
)


def _patterns(n_heads: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n_heads, n, n, generator=g)
    return torch.softmax(s.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf")), -1)


def _attn(panel) -> torch.Tensor:
    return torch.as_tensor(panel.props["attention"], dtype=torch.float64)


class ZeroBands(HookSet):
    """Zero some bands of rot_q at one layer (a minimal intervention, local to this test)."""

    def __init__(self, model, layer: int, bands: list[int]):
        super().__init__(model)
        self.layer, self.bands = layer, bands

    def fwd_hooks(self):
        def zero(a):
            a.bands[:, :, :, self.bands] = 0

        return band_hooks(self.model, zero, layers=[self.layer], sites=["rot_q"])


# ---------------------------------------------------------------------------- data in the views


def test_attention_diff_carries_clean_intervened_and_signed_difference():
    clean, other = _patterns(3, 7, 0), _patterns(3, 7, 1)
    view = attention_diff([f"t{i}" for i in range(7)], clean, other, heads=[2, 0])
    assert view.columns == 3 and len(view.panels) == 6
    assert [p.title for p in view.panels[:3]] == [
        "head 2 · clean",
        "head 2 · intervened",
        "head 2 · intervened − clean",
    ]
    diff = (other - clean).double()
    a = float(diff[[2, 0]].abs().max())
    for row, h in enumerate([2, 0]):
        c, i, d = view.panels[3 * row : 3 * row + 3]
        assert torch.allclose(_attn(c), clean[h].double(), atol=1e-3)
        assert torch.allclose(_attn(i), other[h].double(), atol=1e-3)
        assert torch.allclose(_attn(d), diff[h], atol=1e-3 * a)
        assert d.props["minValue"] == pytest.approx(-a) and d.props["maxValue"] == pytest.approx(a)
        assert c.props["minValue"] == 0 and c.props["maxValue"] == 1
        assert c.props["tokens"] == [f"t{i}" for i in range(7)]
    assert (_attn(view.panels[2]) < 0).any() and (_attn(view.panels[2]) > 0).any()


def test_default_heads_are_those_that_changed_most_with_a_notice():
    clean = _patterns(6, 5)
    other = clean.clone()
    other[4] = _patterns(1, 5, 7)[0]
    other[1] = 0.5 * clean[1] + 0.5 * _patterns(1, 5, 8)[0]
    view = attention_diff(list("abcde"), clean, other, max_heads=2)
    assert [p.title.split(" · ")[0] for p in view.panels[::3]] == ["head 1", "head 4"]
    assert any("2 of 6 heads" in n for n in view.notices)


def test_long_sequences_are_cropped_with_a_visible_notice_and_a_warning():
    clean, other = _patterns(2, 40), _patterns(2, 40, 1)
    tokens = [f"w{i}" for i in range(40)]
    with pytest.warns(CroppedViewWarning, match="0..15 of 40"):
        view = attention_diff(tokens, clean, other, max_tokens=16)
    assert _attn(view.panels[0]).shape == (16, 16)
    assert view.panels[0].props["tokens"] == tokens[:16]
    assert "Showing positions 0..15 of 40" in view.html()
    with pytest.warns(CroppedViewWarning, match="keys before position 30"):
        view = attention_diff(tokens, clean, other, max_tokens=16, start=30)
    assert view.panels[1].props["tokens"] == tokens[30:]
    assert torch.allclose(_attn(view.panels[1]), other[0, 30:, 30:].double(), atol=1e-3)


def test_bad_input_gives_one_line_errors():
    p = _patterns(2, 4)
    with pytest.raises(RopeInterpError, match="3 token labels for 4"):
        attention_diff(list("abc"), p, p)
    with pytest.raises(RopeInterpError, match="!= clean pattern"):
        attention_diff(list("abcd"), p, p[:1])
    with pytest.raises(RopeInterpError, match="NaN"):
        attention_diff(list("abcd"), p, p * float("nan"))
    with pytest.raises(RopeInterpError, match="head 5 is out of range"):
        attention_diff(list("abcd"), p, p, heads=[5])
    with pytest.raises(RopeInterpError, match=r"\[pos\] or \[pos, k\]"):
        band_norm_tokens(list("ab"), torch.ones(2, 2, 2))


def test_band_contribution_view_shows_the_band_term_and_its_effect_on_the_pattern():
    model = tiny_model()
    bs = band_scores(model, torch.tensor([[3, 1, 4, 1, 5, 9]]), layer=1, heads=[1, 2])
    view = band_contribution_view(list("abcdef"), bs, band=5)
    term, effect = view.panels
    assert term.props["attentionHeadNames"] == ["L1H1", "L1H2"]
    expect = torch.tril(bs.per_band[0, :, 5]).double()
    assert torch.allclose(_attn(term), expect, atol=1e-3 * float(expect.abs().max()))
    eff = (bs.pattern() - bs.pattern(drop=[5]))[0].double()
    assert torch.allclose(_attn(effect), eff, atol=1e-3 * float(eff.abs().max()))
    assert "wavelength" in view.caption
    with pytest.raises(RopeInterpError, match="band 9 is not in"):
        band_contribution_view(list("abcdef"), band_scores(model, torch.arange(6), 1, bands=[0, 1]), band=9)


@pytest.mark.parametrize("layout", ["gptj", "partial", "gqa"])
def test_layer_band_norms_are_the_norms_of_the_band_dims(layout):
    model = tiny_layout_model(layout)
    tokens = torch.tensor([[7, 3, 9, 2, 11]])
    spec = RotaryBands.from_model(model)
    band = spec.n_bands - 1
    view = layer_band_norms(model, tokens, layer=1, band=band, site="rot_k")
    _, cache = model.run_with_cache(tokens)
    k = cache[attn_hook(1, "rot_k")][0]  # [pos, kv_head, d_head]
    expect = k[..., spec.dims[band]].norm(dim=-1).double()
    got = torch.as_tensor(view.panels[0].props["values"], dtype=torch.float64)
    assert got.shape == (5, spec.n_kv_heads)
    assert torch.allclose(got, expect, atol=1e-3 * float(expect.max()))  # 4 significant digits of the max


def test_band_norm_tokens_single_column_and_labels():
    view = band_norm_tokens(["x", "y"], torch.tensor([0.5, 2.0]))
    assert view.panels[0].component == "ColoredTokens"
    assert view.panels[0].props["maxValue"] == 2.0
    with pytest.raises(RopeInterpError, match="1 labels for 2 columns"):
        band_norm_tokens(["x", "y"], torch.ones(2, 2), labels=["q"])


def test_ablation_view_clean_column_is_the_models_pattern_and_hooks_match_the_analytic_removal():
    model = tiny_model()
    tokens = torch.tensor([[5, 8, 13, 21, 34, 2, 7]])
    view = ablation_view(model, tokens, layer=1, bands=[0, 2, 3], hooks=ZeroBands(model, 1, [0, 2, 3]))
    assert view.columns == 5 and len(view.panels) == 4 * 5
    _, cache = model.run_with_cache(tokens)
    pattern = cache[attn_hook(1, "pattern")][0].double()
    for h in range(4):
        clean, analytic, d_analytic, full, d_full = view.panels[5 * h : 5 * h + 5]
        assert torch.allclose(_attn(clean), pattern[h], atol=1e-3)
        assert torch.allclose(_attn(analytic), _attn(full), atol=2e-3)  # zeroing q's bands == dropping terms
        assert torch.allclose(
            _attn(d_analytic), _attn(d_full), atol=2e-3 * max(1e-6, d_full.props["maxValue"])
        )
    assert not (_attn(view.panels[2]) == 0).all()
    assert all(len(model.hook_dict[attn_hook(1, s)].fwd_hooks) == 0 for s in ("rot_q", "pattern"))


def test_model_views_crop_the_sequence_before_computing():
    model = tiny_model(n_ctx=64)
    with pytest.warns(CroppedViewWarning, match="0..9 of 30"):
        view = layer_band_view(model, torch.arange(30)[None] % 50, layer=0, band=1, max_tokens=10)
    assert _attn(view.panels[0]).shape == (4, 10, 10)
    assert any("of 30" in n for n in view.notices)


# ---------------------------------------------------------------------------- HTML


def _no_external_loads(html: str) -> None:
    assert not re.search(r"<script[^>]*\bsrc=", html), "script loaded from a URL"
    assert not re.search(r"""(src|href)\s*=\s*["']https?://""", html)
    assert not re.search(r"""(from|import\()\s*["']https?://""", html), "ES module import from a URL"
    assert "unpkg.com" not in html


def test_saved_view_is_self_contained(tmp_path):
    view = attention_diff(list("abcd"), _patterns(1, 4), _patterns(1, 4, 2))
    html = view.save(tmp_path / "sub" / "v.html").read_text()
    _no_external_loads(html)
    assert html.count("var CircuitsVis=") == 1 and "CircuitsVis.AttentionPattern" in html
    assert html.startswith("<!DOCTYPE html>") and html.count("CircuitsVis.render(") == len(view.panels)


def test_page_inlines_the_bundle_once_and_embeds_figures_and_tables(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    ax.set(title="a line", xlabel="x", ylabel="y")
    v1 = attention_diff(list("ab"), _patterns(1, 2), _patterns(1, 2, 3), title="first")
    v2 = band_norm_tokens(["a", "b"], torch.tensor([1.0, 2.0]), title="second")
    path = save_html_page(
        tmp_path / "page.html",
        [("Views", v1), ("Norms", v2), ("Figure", fig), ("Table", pd.DataFrame({"band": [0, 1]}))],
        title="report",
    )
    plt.close(fig)
    html = path.read_text()
    _no_external_loads(html)
    assert html.count("var CircuitsVis=") == 1
    assert "<h3>first</h3>" in html and html.count("<h2>") == 4
    png = re.search(r'alt="a line"[^>]*src="data:image/png;base64,([^"]+)"', html)
    assert png and base64.b64decode(png.group(1))[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<table" in html
    with pytest.raises(TypeError, match="cannot put a int"):
        html_page([("x", 3)])


def test_token_text_cannot_break_out_of_the_script():
    view = band_norm_tokens(["</script><b>x", "<!--"], torch.tensor([1.0, 2.0]))
    html = view.html().replace(circuitsvis_bundle(), "")
    assert "</script><b>x" not in html and "<!--" not in html
    assert html.count("</script>") == html.count("<script>") == 2  # the bundle's tag and the panel's


def test_repr_html_does_no_network_io(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("network access from _repr_html_")

    monkeypatch.setattr(urllib.request, "urlopen", forbidden)
    monkeypatch.setattr(socket, "create_connection", forbidden)
    view = band_norm_tokens(["a"], torch.tensor([1.0]))
    out = view._repr_html_()
    assert "var CircuitsVis=" in out and "<body" not in out and "body {" not in out
    assert len(view.rendered()) == 1 and "unpkg.com" in str(view.rendered()[0])  # circuitsvis' own object


# ---------------------------------------------------------------------------- headless Chromium

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--proxy-server=127.0.0.1:9",  # nothing listens there: the network is unreachable
    "--no-first-run",
    "--disable-extensions",
    "--virtual-time-budget=5000",  # let the module scripts and React run
    "--window-size=1400,1000",
]


@pytest.fixture(scope="module")
def chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        msg = "chromium not installed (scripts/install_chromium.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(msg + " — CI must run the browser test")
        pytest.skip(msg)
    return path


def _browse(chromium: str, page: Path, tmp: Path) -> tuple[str, list[str], Path]:
    """DOM after JS ran, URLs the PAGE asked for (not Chromium's own background calls), a screenshot."""
    netlog, shot = tmp / f"{page.stem}.netlog.json", tmp / f"{page.stem}.png"
    common = [chromium, *FLAGS, f"--user-data-dir={tmp / 'profile'}"]
    dom = subprocess.run(
        [*common, f"--log-net-log={netlog}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    subprocess.run(
        [*common, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True
    )
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    page_urls = [
        e["params"]["url"]
        for e in log["events"]
        if e["type"] == start_job
        and "url" in e.get("params", {})
        and e["params"].get("initiator") != "not an origin"  # the page's origin is "null" (file://)
        and not e["params"]["url"].startswith("file:")
    ]
    return dom, page_urls, shot


def _coloured_pixels(png: Path) -> int:
    """Pixels in circuitsvis' blue (positive) or red (negative) — not text, borders or the notice's yellow."""
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    blue = (b - r > 40) & (b - g > 40)
    red = (r - g > 40) & (r - b > 40)
    return int((blue | red).sum())


def test_browser_draws_the_attention_view_offline(chromium, tmp_path):
    view = ablation_view(
        tiny_model(), torch.tensor([[1, 5, 2, 7, 3, 9, 4, 8]]), layer=1, bands=[0, 1], max_heads=2
    )
    page = view.save(tmp_path / "attn.html")
    dom, urls, shot = _browse(chromium, page, tmp_path)
    assert urls == []
    assert "render failed:" not in re.sub(r"<script.*?</script>", "", dom, flags=re.S)
    mounts = re.findall(r'<div id="rope-vis-\w+" class="rv-mount">(.*?)</div>\s*<script', dom, flags=re.S)
    assert len(mounts) == len(view.panels) == 6
    assert all("<canvas" in m for m in mounts)  # every chart.js heatmap was created by the React component
    assert _coloured_pixels(shot) > 5000  # and painted: blue/red cells, not a blank page


def test_browser_draws_coloured_tokens_offline(chromium, tmp_path):
    view = layer_band_norms(tiny_model(), torch.tensor([[4, 8, 15, 16, 23, 42]]), layer=0, band=0)
    dom, urls, shot = _browse(chromium, view.save(tmp_path / "tokens.html"), tmp_path)
    assert urls == []
    assert 'class="colored-tokens"' in dom and ">#42<" in dom and "head 3" in dom
    assert _coloured_pixels(shot) > 200


def test_browser_check_catches_the_cdn_version(chromium, tmp_path):
    """Control: circuitsvis' str() (CDN import) must be caught fetching and not drawing offline."""
    view = attention_diff(list("abc"), _patterns(1, 3), _patterns(1, 3, 1))
    page = tmp_path / "cdn.html"
    page.write_text(f"<html><body>{view.rendered()[0]}</body></html>")
    dom, urls, shot = _browse(chromium, page, tmp_path)
    assert any("unpkg.com" in u for u in urls)
    assert "<canvas" not in dom
    assert _coloured_pixels(shot) == 0


# ---------------------------------------------------------------------------- the embedded model


@pytest.mark.slow
def test_ablation_view_on_smollm2(smol, english_tokens):
    with pytest.warns(CroppedViewWarning):
        view = ablation_view(smol, english_tokens, layer=1, bands=list(range(8)), max_tokens=48)
    assert len(view.panels) == 4 * 3
    heads = [int(p.title.split(" · ")[0].split("H")[1]) for p in view.panels[::3]]
    _, cache = smol.run_with_cache(english_tokens[:, :48], names_filter=attn_hook(1, "pattern"))
    pattern = cache[attn_hook(1, "pattern")][0].double()
    for row, h in enumerate(heads):
        assert torch.allclose(_attn(view.panels[3 * row]), pattern[h], atol=1e-3)
    assert view.panels[0].props["tokens"][1:4] == smol.to_str_tokens(english_tokens[0, 1:4])
    # removing the 8 highest-frequency bands changes the shown heads visibly
    assert min(float(_attn(p).abs().max()) for p in view.panels[2::3]) > 0.01
