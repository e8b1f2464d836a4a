"""The band explorer: embedded data, input errors, and the page in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

from rope_interp.errors import LayerError, ParameterError, RopeInterpError
from rope_interp.model.testing import tiny_model
from rope_interp.read.decompose import band_scores
from rope_interp.view.explore import Explorer, decode, explore

TOKENS = torch.arange(1, 25)[None]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _payload(html: str) -> dict:
    m = re.search(r'<script id="rx-data" type="application/json">(.*?)</script>', html, re.S)
    assert m
    return json.loads(m.group(1).replace("<\\/", "</"))


def test_embedded_terms_decode_to_band_scores(model, tmp_path):
    ex = explore(model, TOKENS, layer=1, heads=[0, 2])
    payload = _payload(ex.save(tmp_path / "e.html").read_text())
    pb, rest = decode(payload)
    ref = band_scores(model, TOKENS, 1, heads=[0, 2])
    # float16 storage: relative rounding 2**-11 of each term
    np.testing.assert_allclose(pb, ref.per_band[0].numpy(), rtol=2**-10, atol=1e-6)
    np.testing.assert_array_equal(rest, ref.remainder[0].numpy())
    assert payload["heads"] == [0, 2] and payload["n"] == TOKENS.shape[1]
    assert len(payload["tokens"]) == TOKENS.shape[1]
    assert not list(tmp_path.glob(".*tmp*"))


def test_crop_notice_and_bad_inputs(model):
    ex = explore(model, torch.arange(1, 41)[None], layer=0, max_positions=16)
    assert ex.payload()["n"] == 16 and "cropped to the first 16 of 40" in ex.html()
    assert "<iframe srcdoc=" in ex._repr_html_()
    with pytest.raises(LayerError):
        explore(model, TOKENS, layer=99)
    with pytest.raises(ParameterError):
        explore(model, TOKENS, layer=0, heads=[])
    with pytest.raises(RopeInterpError):
        explore(model, TOKENS, layer=0, heads=[99])
    with pytest.raises(RopeInterpError):
        explore(model, TOKENS, layer=0, max_positions=0)


@pytest.fixture(scope="module")
def driver():
    chromedriver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None or not os.path.exists(chromedriver):
        msg = "chromium / chromedriver not installed (scripts/install_chromium.sh installs chromium)"
        if os.environ.get("CI"):
            pytest.fail(msg + " — CI must run the browser test")
        pytest.skip(msg)
    webdriver = pytest.importorskip("selenium.webdriver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=webdriver.ChromeService(executable_path=chromedriver), options=opts)
    d.set_page_load_timeout(30)
    d.set_script_timeout(30)
    yield d
    d.quit()


def _edited(driver) -> np.ndarray:
    return np.array(json.loads(driver.find_element("id", "edited-values").get_attribute("textContent")))


# float16 storage of each term: the drawn pattern matches the float32 BandScores.pattern to 2e-3
# absolute, and the pattern of the float16-rounded terms to 1e-5 (float32 sums in the page).
ATOL_F32, ATOL_F16 = 2e-3, 1e-5


def test_browser_recomputes_band_scores_pattern_offline(model, driver, tmp_path):
    heads = [0, 1, 3]
    ex = explore(model, TOKENS, layer=1, heads=heads)
    page = ex.save(tmp_path / "explorer.html")
    driver.get(page.as_uri())
    ref = ex.scores
    rounded = type(ref)(**{**ref.__dict__, "per_band": ref.per_band.half().float()})
    np.testing.assert_allclose(_edited(driver), ref.pattern()[0, 0].numpy(), atol=ATOL_F32)
    driver.find_element("id", "band-0").click()
    driver.find_element("id", "band-1").click()
    got = _edited(driver)
    np.testing.assert_allclose(got, ref.pattern(drop=[0, 1])[0, 0].numpy(), atol=ATOL_F32)
    np.testing.assert_allclose(got, rounded.pattern(drop=[0, 1])[0, 0].numpy(), atol=ATOL_F16)
    assert np.abs(got - ref.pattern()[0, 0].numpy()).max() > 10 * ATOL_F32  # the edit shows
    # head 3 (third option), drop the 2 bands with the highest |score| share
    driver.find_element("css selector", "#head-select option[value='2']").click()
    driver.find_element("id", "drop-highest").click()
    share = ex.payload()["share"][2]
    top2 = sorted(np.argsort(share)[::-1][:2].tolist())
    assert driver.execute_script("return window.__explorer.dropped()") == top2
    np.testing.assert_allclose(_edited(driver), ref.pattern(drop=top2)[0, 2].numpy(), atol=ATOL_F32)
    # the page's own pattern() for any head/drop
    js = np.array(driver.execute_script("return window.__explorer.pattern(1, [2, 5])"))
    np.testing.assert_allclose(js, ref.pattern(drop=[2, 5])[0, 1].numpy(), atol=ATOL_F32)
    # hover text names each band's term
    tip = driver.execute_script(
        "const c=document.getElementById('canvas-edited'),r=c.getBoundingClientRect();"
        "c.dispatchEvent(new MouseEvent('mousemove',{clientX:r.left+r.width-2,clientY:r.top+r.height-2}));"
        "return document.getElementById('rx-tip').textContent;"
    )
    assert "band 0" in tip and f"query {TOKENS.shape[1] - 1}" in tip
    urls = driver.execute_script(
        "return performance.getEntries().filter(e => ['navigation', 'resource'].includes(e.entryType))"
        ".map(e => e.name)"
    )
    assert urls and urls[0].startswith("file:")
    assert all(u.split(":")[0] in ("file", "data", "about") for u in urls), urls
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert not errors, errors


def test_explorer_is_exported():
    import rope_interp as ri

    assert ri.explore is explore and ri.Explorer is Explorer
