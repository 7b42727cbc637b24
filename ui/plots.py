"""Plots on the page: light and dark mode, projector mode, and each figure downloaded as PNG or SVG with its caption (in the browser).

The figures (tracer.figures) are drawn white with dark text, as in an offline HTML export; in dark mode the page's
CSS makes their backgrounds transparent and their text light (`PLOT_CSS`), so no white box remains. `EXPORT_JS` (in
the page's head) defines `locusExport(elemId, format)`: the plot of that element drawn again by plotly.js, white,
with its caption (`figure.layout.meta.caption`) written under it, and downloaded. On a screen at least 1600 px wide
(a projector at 1920x1080) `locusProject` redraws every plot 1.3x taller with text about 1.2x larger.
"""

from __future__ import annotations

import re
from typing import Any

import gradio as gr

PLOT_CSS = """
.dark .js-plotly-plot .main-svg { background: transparent !important; }
.dark .js-plotly-plot .bglayer rect.bg { fill: transparent !important; }
.dark .js-plotly-plot .main-svg text:not(.nums):not(.name) { fill: var(--body-text-color) !important; }
.dark .js-plotly-plot .main-svg .xaxislayer-above path, .dark .js-plotly-plot .main-svg .yaxislayer-above path {
  stroke: var(--body-text-color-subdued) !important; }
.plot-export { gap: 6px !important; justify-content: flex-end; }
.plot-export button { min-width: 3.6em !important; flex-grow: 0 !important; padding: 2px 10px !important; }
"""

EXPORT_JS = """
<script>
window.locusExport = async function (elemId, format) {
  const graph = document.querySelector('#' + elemId + ' .js-plotly-plot');
  if (!graph || !window.Plotly || !graph._fullLayout) { return; }
  const caption = ((graph.layout && graph.layout.meta && graph.layout.meta.caption) || '').trim();
  const width = Math.max(480, graph._fullLayout.width || 600);
  const perLine = Math.max(40, Math.floor(width / 7.5));
  const lines = [];
  let line = '';
  for (const word of caption.split(/\\s+/).filter(Boolean)) {
    if (line && (line + ' ' + word).length > perLine) { lines.push(line); line = word; } else { line = line ? line + ' ' + word : word; }
  }
  if (line) { lines.push(line); }
  const escape = (text) => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  const layout = JSON.parse(JSON.stringify(graph.layout));
  delete layout.__locusBase;
  delete layout.__locusScale;
  const margin = Object.assign({l: 10, r: 10, t: 56, b: 50}, layout.margin || {});
  const extra = lines.length ? 20 * lines.length + 16 : 0;
  layout.width = width;
  layout.height = (graph._fullLayout.height || 400) + extra;
  layout.margin = Object.assign({}, margin, {b: margin.b + extra, autoexpand: true});
  layout.paper_bgcolor = 'white';
  layout.plot_bgcolor = 'white';
  layout.font = Object.assign({}, layout.font || {}, {color: '#222'});
  if (lines.length) {
    layout.annotations = (layout.annotations || []).concat([{
      text: lines.map(escape).join('<br>'), xref: 'paper', yref: 'paper', x: 0, y: 0, xanchor: 'left', yanchor: 'top',
      yshift: -margin.b + 4, showarrow: false, align: 'left', font: {size: 14, color: '#333'},
    }]);
  }
  const name = (graph.layout.meta && graph.layout.meta.filename) || elemId;
  const url = await window.Plotly.toImage({data: graph.data, layout: layout}, {
    format: format, width: layout.width, height: layout.height, scale: format === 'png' ? 2 : 1,
  });
  const link = document.createElement('a');
  link.href = url;
  link.download = name + '.' + format;
  document.body.appendChild(link);
  link.click();
  link.remove();
};

// Projector mode: on a wide screen (a projector at 1920x1080) every plot is drawn taller, with larger text. The server's
// figure is remembered on its layout object (a new figure from the server brings a new one); the export uses the same.
window.LOCUS_WIDE = 1600;
window.LOCUS_WIDE_SCALE = 1.3;
window.locusProject = function (graph) {
  const full = graph._fullLayout;
  if (!window.Plotly || !graph.layout || !full) { return; }
  const scale = window.innerWidth >= window.LOCUS_WIDE ? window.LOCUS_WIDE_SCALE : 1;
  const layout = graph.layout;
  if (layout.__locusBase === undefined) {  // the server's sizes, read once per figure (a hidden axis has no tick font)
    const sizes = {};
    const keep = (key, value) => { if (typeof value === 'number' && isFinite(value)) { sizes[key] = value; } };
    keep('height', full.height);
    keep('font.size', full.font && full.font.size);
    keep('title.font.size', full.title && full.title.font && full.title.font.size);
    for (const name of Object.keys(full)) {
      const axis = full[name];
      if (!/^[xy]axis[0-9]*$/.test(name) || !axis) { continue; }
      keep(name + '.tickfont.size', axis.tickfont && axis.tickfont.size);
      keep(name + '.title.font.size', axis.title && axis.title.font && axis.title.font.size);
    }
    (full.annotations || []).forEach((note, index) => keep('annotations[' + index + '].font.size', note.font && note.font.size));
    layout.__locusBase = sizes;
    layout.__locusScale = 1;
  }
  if (layout.__locusScale === scale) { return; }
  layout.__locusScale = scale;
  const update = {};
  for (const [key, value] of Object.entries(layout.__locusBase)) {
    update[key] = key === 'height' ? Math.round(value * scale) : Math.round(value * (1 + (scale - 1) * 0.75));
  }
  window.Plotly.relayout(graph, update);
};
window.locusProjectAll = function () {
  document.querySelectorAll('.js-plotly-plot').forEach((graph) => {
    try {
      if (!graph.__locusHooked && graph.on) {
        graph.__locusHooked = true;
        graph.on('plotly_afterplot', () => { try { window.locusProject(graph); } catch (error) { console.warn(error); } });
      }
      window.locusProject(graph);
    } catch (error) {  // one odd figure never keeps the others from following the screen
      console.warn(error);
    }
  });
};
new MutationObserver(() => window.locusProjectAll()).observe(document.documentElement, {childList: true, subtree: true});
window.addEventListener('resize', () => window.locusProjectAll());
</script>
"""


def slug(text: str) -> str:
    """'Eiffel Tower' -> 'eiffel-tower' (for file names)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:40] or "figure"


def export_buttons(elem_id: str) -> tuple[gr.Button, gr.Button]:
    """Small 'PNG' and 'SVG' buttons that download the plot of `elem_id` with its caption (in the browser only)."""
    with gr.Row(elem_classes=["plot-export"]):
        png = gr.Button("PNG", size="sm", variant="secondary", elem_id=f"{elem_id}-png", scale=0, min_width=60)
        svg = gr.Button("SVG", size="sm", variant="secondary", elem_id=f"{elem_id}-svg", scale=0, min_width=60)
    for button, fmt in ((png, "png"), (svg, "svg")):
        button.click(None, None, None, js=f"() => window.locusExport('{elem_id}', '{fmt}')", queue=False,
                     api_visibility="private")
    return png, svg


def named(figure: Any, filename: str) -> Any:
    """The figure with the file name its download takes (`layout.meta.filename`)."""
    meta = dict(figure.layout.meta) if isinstance(figure.layout.meta, dict) else {}
    meta["filename"] = slug(filename) if filename else "figure"
    figure.update_layout(meta=meta)
    return figure
