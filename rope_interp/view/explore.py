"""An offline band explorer: one self-contained HTML page that recomputes attention patterns
with bands dropped, in the browser, from the stored per-band score terms.

The page embeds, for one layer and the chosen heads, ``per_band`` ``[head, band, q, k]`` as
float16 (base64) and the remainder ``[head, q, k]`` as float32, plus the model's soft-cap and
sliding window. Its vanilla JavaScript (no library, no network, works from ``file://``) sums
the kept terms, applies soft-cap then the causal / window mask exactly as
:func:`~rope_interp.read.masks.masked_scores` does, and takes the softmax: the drawn pattern
is ``BandScores.pattern(drop=...)`` up to float16 rounding of the terms.
Size: ``heads * (2 * bands + 4) * q * q`` bytes, x4/3 for base64: 9 heads x 32 bands x 128 tokens is a
13.4 MB page (measured on SmolLM2-135M, layer 16; a redraw takes ~10-30 ms in headless Chromium).
Ours (no paper).
"""

from __future__ import annotations

import base64
import html as html_lib
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ParameterError
from ..model import adapter
from ..model.kind import Model
from ..read.decompose import BandScores, band_scores
from ..validate import positive_int


@dataclass
class Explorer:
    """The explorer page for one layer; ``_repr_html_`` shows it in notebooks, :meth:`save` writes it.

    Attributes:
        scores: the :class:`BandScores` it was built from (batch 1, positions cropped).
        tokens: the string tokens shown on the axes.
        notices: what was cropped or left out (shown on the page).
    """

    scores: BandScores
    tokens: list[str]
    notices: list[str] = field(default_factory=list)

    def payload(self) -> dict[str, Any]:
        """The JSON embedded in the page (per_band float16 and remainder float32, base64, C order)."""
        bs = self.scores
        per_band = bs.per_band[0].detach().cpu().numpy().astype("<f2")
        rest = bs.remainder[0].detach().cpu().numpy().astype("<f4")
        share = bs.to_dataframe()["share_abs"].to_numpy().reshape(len(bs.heads), len(bs.bands))
        return {
            "layer": bs.layer,
            "heads": bs.heads,
            "bands": bs.bands,
            "n": int(per_band.shape[-1]),
            "softcap": bs.softcap,
            "window": bs.window,
            "q_start": bs.q_start,
            "tokens": self.tokens,
            "share": [[round(float(x), 5) for x in row] for row in share],
            "per_band": base64.b64encode(per_band.tobytes()).decode("ascii"),
            "rest": base64.b64encode(rest.tobytes()).decode("ascii"),
        }

    def html(self) -> str:
        """A complete offline HTML document."""
        data = json.dumps(self.payload()).replace("</", "<\\/")
        notices = "".join(f'<div class="rx-notice">⚠ {html_lib.escape(n)}</div>' for n in self.notices)
        title = f"rope_interp band explorer — layer {self.scores.layer}"
        return (
            "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
            f"<title>{html_lib.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h2>{html_lib.escape(title)}</h2>{notices}{_BODY}"
            f'<script id="rx-data" type="application/json">{data}</script>'
            f"<script>{_JS}</script></body></html>\n"
        )

    def save(self, path: str | Path) -> Path:
        """Write :meth:`html` to ``path`` atomically (a temporary name, then renamed); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            tmp.write_text(self.html(), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def _repr_html_(self) -> str:
        doc = html_lib.escape(self.html(), quote=True)
        return f'<iframe srcdoc="{doc}" style="width:100%;height:720px;border:0" sandbox="allow-scripts"></iframe>'


def explore(
    model: Model,
    tokens: Any,
    layer: int,
    heads: Sequence[int] | None = None,
    max_positions: int = 128,
) -> Explorer:
    """Build the band explorer of ``layer`` for ``heads`` (all when None) on ``tokens``.

    Uses the first sequence of the batch and its first ``max_positions`` tokens (a notice
    on the page says so when it crops). Raises :class:`~rope_interp.errors.ParameterError`
    for an empty ``heads`` and the usual layer / head / token errors otherwise.

    >>> from rope_interp.model.testing import tiny_model
    >>> import torch
    >>> ex = explore(tiny_model(), torch.tensor([[1, 2, 3, 4]]), layer=0, heads=[0, 1])
    >>> ex.payload()["n"], len(ex.payload()["bands"])
    (4, 8)
    """
    positive_int("max_positions", max_positions)
    if heads is not None:
        heads = list(heads)
        if not heads:
            raise ParameterError("heads is empty: pass heads=None for all heads or a list of head indices")
    toks = adapter.to_tokens(model, tokens)
    notices = []
    if toks.shape[0] > 1:
        notices.append(f"batch of {toks.shape[0]} sequences: showing the first only")
    if toks.shape[1] > max_positions:
        notices.append(f"positions cropped to the first {max_positions} of {toks.shape[1]} (max_positions)")
    toks = toks[:1, :max_positions]
    bs = band_scores(model, toks, layer, heads=heads)
    try:
        strs = [str(s) for s in model.to_str_tokens(toks[0])]  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 — a model without a tokenizer: show the ids
        strs = [str(int(t)) for t in toks[0]]
    return Explorer(bs, strs, notices)


def decode(payload: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(per_band [head, band, q, k] float16, remainder [head, q, k] float32)`` from :meth:`Explorer.payload`."""
    h, b, n = len(payload["heads"]), len(payload["bands"]), payload["n"]
    pb = np.frombuffer(base64.b64decode(payload["per_band"]), dtype="<f2").reshape(h, b, n, n)
    rest = np.frombuffer(base64.b64decode(payload["rest"]), dtype="<f4").reshape(h, n, n)
    return pb, rest


_CSS = """
body { font-family: sans-serif; margin: 1em; }
.rx-notice { background: #fff4d6; border-left: 4px solid #e0a000; padding: 4px 8px; margin: 4px 0; }
#rx-bands label { display: inline-block; margin: 2px 6px 2px 0; font-size: 12px; }
.rx-panels { display: flex; gap: 12px; flex-wrap: wrap; }
.rx-panels figure { margin: 0; } .rx-panels figcaption { font-size: 13px; text-align: center; }
canvas { border: 1px solid #ccc; image-rendering: pixelated; }
#rx-tip { font: 12px monospace; white-space: pre; background: #f6f8fa; padding: 6px; min-height: 3em; }
#edited-values { display: none; }
"""

_BODY = """
<div>head <select id="head-select"></select>
 k <input id="drop-k" type="number" min="1" value="2" style="width:4em">
 <button id="drop-highest">drop k highest</button> <button id="drop-lowest">drop k lowest</button>
 <button id="drop-none">keep all</button> <span id="rx-time"></span></div>
<div id="rx-bands"></div>
<div class="rx-panels">
<figure><canvas id="canvas-clean" width="384" height="384"></canvas><figcaption>clean pattern</figcaption></figure>
<figure><canvas id="canvas-edited" width="384" height="384"></canvas><figcaption>edited (bands dropped)</figcaption></figure>
<figure><canvas id="canvas-diff" width="384" height="384"></canvas>
<figcaption>edited − clean (red +, blue −)</figcaption></figure>
</div>
<div id="rx-tip">hover a cell to see each band's term</div>
<pre id="edited-values"></pre>
"""

_JS = r"""
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("rx-data").textContent);
  const H = D.heads.length, B = D.bands.length, N = D.n;
  function b64(s) { const r = atob(s), u = new Uint8Array(r.length);
    for (let i = 0; i < r.length; i++) u[i] = r.charCodeAt(i); return u.buffer; }
  function f16(h) { const s = (h & 0x8000) ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
    if (e === 0) return s * Math.pow(2, -14) * (f / 1024);
    if (e === 31) return f ? NaN : s * Infinity;
    return s * Math.pow(2, e - 15) * (1 + f / 1024); }
  const raw = new Uint16Array(b64(D.per_band)), PB = new Float32Array(raw.length);
  for (let i = 0; i < raw.length; i++) PB[i] = f16(raw[i]);
  const REST = new Float32Array(b64(D.rest));
  const dropped = new Set();
  let head = 0;
  const sel = document.getElementById("head-select");
  D.heads.forEach(function (h, i) { const o = document.createElement("option");
    o.value = i; o.textContent = "head " + h; sel.appendChild(o); });
  const bandsDiv = document.getElementById("rx-bands");
  D.bands.forEach(function (b, j) {
    const l = document.createElement("label"), c = document.createElement("input");
    c.type = "checkbox"; c.id = "band-" + j; c.title = "drop band " + b;
    c.addEventListener("change", function () { if (c.checked) dropped.add(j); else dropped.delete(j); redraw(); });
    l.appendChild(c); l.appendChild(document.createTextNode(" " + b)); l.id = "band-label-" + j;
    bandsDiv.appendChild(l); });
  function visible(m, n) { const q = D.q_start + m;
    return n <= q && (D.window === null || n > q - D.window); }
  function pattern(h, drop) {
    const out = [];
    for (let m = 0; m < N; m++) {
      const row = new Float64Array(N); let mx = -Infinity;
      for (let n = 0; n < N; n++) {
        if (!visible(m, n)) { row[n] = -Infinity; continue; }
        let s = REST[(h * N + m) * N + n];
        for (let j = 0; j < B; j++) if (!drop.has(j)) s += PB[((h * B + j) * N + m) * N + n];
        if (D.softcap !== null) s = D.softcap * Math.tanh(s / D.softcap);
        row[n] = s; if (s > mx) mx = s; }
      let z = 0;
      for (let n = 0; n < N; n++) { row[n] = row[n] === -Infinity ? 0 : Math.exp(row[n] - mx); z += row[n]; }
      const r = []; for (let n = 0; n < N; n++) r.push(row[n] / z);
      out.push(r); }
    return out; }
  function draw(id, P, diff) {
    const cv = document.getElementById(id), ctx = cv.getContext("2d");
    const img = ctx.createImageData(N, N);
    let mx = 1e-12; if (diff) P.forEach(function (r) { r.forEach(function (v) { mx = Math.max(mx, Math.abs(v)); }); });
    for (let m = 0; m < N; m++) for (let n = 0; n < N; n++) {
      const v = P[m][n], k = 4 * (m * N + n); let r, g, b;
      if (diff) { const t = Math.abs(v) / mx; r = v > 0 ? 255 : 255 * (1 - t); b = v < 0 ? 255 : 255 * (1 - t);
        g = 255 * (1 - t); } else { r = g = 255 * (1 - Math.sqrt(v)); b = 255; }
      img.data[k] = r; img.data[k + 1] = g; img.data[k + 2] = b; img.data[k + 3] = 255; }
    const off = document.createElement("canvas"); off.width = N; off.height = N;
    off.getContext("2d").putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false; ctx.clearRect(0, 0, cv.width, cv.height);
    ctx.drawImage(off, 0, 0, cv.width, cv.height); }
  let clean = null, edited = null;
  function redraw() {
    const t0 = performance.now();
    clean = pattern(head, new Set()); edited = pattern(head, dropped);
    const diff = edited.map(function (r, m) { return r.map(function (v, n) { return v - clean[m][n]; }); });
    draw("canvas-clean", clean, false); draw("canvas-edited", edited, false); draw("canvas-diff", diff, true);
    D.bands.forEach(function (b, j) { document.getElementById("band-" + j).checked = dropped.has(j); });
    document.getElementById("edited-values").textContent = JSON.stringify(edited);
    const ms = performance.now() - t0; window.__explorer.lastRedrawMs = ms;
    document.getElementById("rx-time").textContent = "redraw " + ms.toFixed(0) + " ms"; }
  function dropExtreme(highest) {
    const k = Math.max(1, Math.min(B, parseInt(document.getElementById("drop-k").value, 10) || 1));
    const order = D.bands.map(function (_, j) { return j; });
    order.sort(function (a, b) { return highest ? D.share[head][b] - D.share[head][a] : D.share[head][a] - D.share[head][b]; });
    dropped.clear(); order.slice(0, k).forEach(function (j) { dropped.add(j); }); redraw(); }
  document.getElementById("drop-highest").addEventListener("click", function () { dropExtreme(true); });
  document.getElementById("drop-lowest").addEventListener("click", function () { dropExtreme(false); });
  document.getElementById("drop-none").addEventListener("click", function () { dropped.clear(); redraw(); });
  sel.addEventListener("change", function () { head = parseInt(sel.value, 10); redraw(); });
  function hover(ev) {
    const cv = ev.target, r = cv.getBoundingClientRect();
    const n = Math.floor((ev.clientX - r.left) / r.width * N), m = Math.floor((ev.clientY - r.top) / r.height * N);
    if (m < 0 || n < 0 || m >= N || n >= N) return;
    let t = "query " + m + " " + JSON.stringify(D.tokens[m]) + "  key " + n + " " + JSON.stringify(D.tokens[n]) +
      "\nclean " + clean[m][n].toFixed(4) + "  edited " + edited[m][n].toFixed(4) +
      "  rest " + REST[(head * N + m) * N + n].toFixed(3) + "\n";
    D.bands.forEach(function (b, j) { t += "band " + b + (dropped.has(j) ? "*" : "") + ": " +
      PB[((head * B + j) * N + m) * N + n].toFixed(3) + ((j + 1) % 8 ? "  " : "\n"); });
    document.getElementById("rx-tip").textContent = t; }
  ["canvas-clean", "canvas-edited", "canvas-diff"].forEach(function (id) {
    document.getElementById(id).addEventListener("mousemove", hover); });
  window.__explorer = { pattern: function (h, drop) { return pattern(h, new Set(drop || [])); },
    edited: function () { return edited; }, dropped: function () { return Array.from(dropped).sort(function (a, b) { return a - b; }); },
    share: D.share, lastRedrawMs: null };
  redraw();
})();
"""
