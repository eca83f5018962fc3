"""`d1 trace`: one self-contained HTML page (inline CSS and JS, no network) replaying traced generations.

The page shows one item at a time: a slider over the steps (0 = all masked) and a play button; each token is
coloured by the step that decided it (hue) or by its confidence, tokens decided by the shown step are marked,
masked positions are placeholders. Scored tasks show the verdict; Sudoku draws the grid as it fills in.
`#item=I&step=K` in the URL opens item I at step K.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from d1.diffusion.trace import row_from_dict
from d1.evaluation.traces import read_traces, trace_file_at
from d1.utils import write_atomic

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
#controls{display:flex;gap:1em;align-items:center;flex-wrap:wrap;margin:.8em 0}
#step{width:28em}
#tokens{font-family:monospace;white-space:pre-wrap;line-height:1.9;background:#fff;border:1px solid #ccc;
 padding:.8em;max-width:60em}
.tok{border-radius:3px;padding:0 1px}
.masked{color:#aaa;background:#eee}
.new{outline:2px solid #d00}
#verdict{font-weight:bold;margin:.5em 0}
.ok{color:#0a0}.bad{color:#c00}
#grid{display:grid;grid-template-columns:repeat(4,2.6em);gap:3px;margin:1em 0}
.cell{height:2.6em;display:flex;align-items:center;justify-content:center;font:bold 1.3em monospace;
 background:#fff;border:1px solid #999}
.given{background:#ddd;color:#333}.right{background:#c8f0c8}.wrong{background:#f6c0c0}
#legend{font-size:.85em;color:#555}
"""

_JS = """
const DATA = JSON.parse(document.getElementById('d1-data').textContent);
const $ = id => document.getElementById(id);
let item = 0, timer = null;
function colour(it, pos){
  const when = it.decided_at[pos], conf = it.confidence[pos];
  if ($('mode').value === 'confidence') return `hsl(${Math.round(120*conf)},70%,75%)`;
  return `hsl(${Math.round(260*(when-1)/Math.max(1,it.last-1))},70%,80%)`;
}
function render(){
  const it = DATA.items[item], k = Number($('step').value);
  $('step-label').textContent = `step ${k} / ${it.last}`;
  const box = $('tokens'); box.textContent = '';
  it.pieces.forEach((piece, pos) => {
    const span = document.createElement('span'), when = it.decided_at[pos];
    span.className = 'tok'; span.dataset.pos = pos; span.dataset.step = when;
    if (when <= k){
      span.classList.add('decided'); span.textContent = piece; span.style.background = colour(it, pos);
      span.title = `step ${when}, confidence ${it.confidence[pos].toFixed(3)}`;
      if (when === k) span.classList.add('new');
    } else { span.classList.add('masked'); span.textContent = '\\u2591'; }
    box.appendChild(span);
  });
  const v = $('verdict');
  if (it.correct === null){ v.textContent = ''; }
  else {
    v.className = it.correct ? 'ok' : 'bad';
    v.textContent = (it.correct ? 'correct' : 'incorrect') + ` - extracted ${JSON.stringify(it.extracted)}, `
      + `truth ${JSON.stringify(it.ground_truth)}`;
  }
  const grid = $('grid'); grid.textContent = '';
  if (it.grids.length){
    const now = it.grids[Math.min(k, it.grids.length - 1)] || '0'.repeat(16);
    for (let c = 0; c < 16; c++){
      const cell = document.createElement('div'), given = it.puzzle[c] !== '0';
      const digit = given ? it.puzzle[c] : now[c];
      const verdict = digit === it.ground_truth[c] ? ' right' : ' wrong';
      cell.className = 'cell' + (given ? ' given' : digit !== '0' ? verdict : '');
      cell.textContent = digit === '0' ? '' : digit; grid.appendChild(cell);
    }
  }
}
function choose(i){
  item = i; const it = DATA.items[i];
  $('step').max = it.last; $('step').value = Math.min(Number($('step').value), it.last);
  $('question').textContent = it.question; render();
}
function play(){
  if (timer){ clearInterval(timer); timer = null; $('play').textContent = 'play'; return; }
  const s = $('step'); if (Number(s.value) >= Number(s.max)) s.value = 0;
  $('play').textContent = 'pause';
  timer = setInterval(() => {
    if (Number(s.value) >= Number(s.max)){ play(); return; }
    s.value = Number(s.value) + 1; render();
  }, 250);
}
DATA.items.forEach((it, i) => {
  const o = document.createElement('option'); o.value = i;
  o.textContent = `item ${it.index}` + (it.correct === null ? '' : it.correct ? ' (correct)' : ' (incorrect)');
  $('item').appendChild(o);
});
$('item').addEventListener('change', e => choose(Number(e.target.value)));
$('step').addEventListener('input', render);
$('mode').addEventListener('change', render);
$('play').addEventListener('click', play);
function fromHash(){
  const hash = new URLSearchParams(location.hash.slice(1));
  $('item').value = Number(hash.get('item') || 0);
  $('step').max = DATA.items[Number($('item').value)].last;
  $('step').value = hash.has('step') ? Number(hash.get('step')) : $('step').max;
  choose(Number($('item').value));
}
window.addEventListener('hashchange', fromHash);
fromHash();
"""


def viewer_item(item: dict[str, Any]) -> dict[str, Any]:
    """What the page needs of a trace-file item: each position's text, confidence and deciding step, counted as
    the slider counts (step 0: before any forward pass, the k-th pass decides at step k, early-stop fills one
    step after the last pass; 0 for a position no pass decided, as a prefilled one)."""
    row = row_from_dict(item["trace"])
    decided_at = [when + 1 for when in row.decided_at()]
    confidence = [1.0] * row.gen_length
    for step in row.steps:
        for position, value in zip(step.positions, step.confidences, strict=True):
            confidence[position] = value
    keep = ("index", "question", "ground_truth", "pieces", "correct", "extracted", "puzzle", "grids")
    shown = {key: item.get(key) for key in keep}
    return {**shown, "decided_at": decided_at, "confidence": confidence, "last": max(decided_at)}


def render_html(items: list[dict[str, Any]], title: str) -> str:
    """The viewer page for trace-file `items`."""
    data = json.dumps({"items": [viewer_item(item) for item in items]}).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body>
<h2>{html.escape(title)}</h2>
<details><summary>question</summary><pre id="question"></pre></details>
<div id="controls">
<select id="item"></select>
<button id="play">play</button>
<input id="step" type="range" min="0" step="1">
<span id="step-label"></span>
<select id="mode"><option value="step">colour: step decided</option>
<option value="confidence">colour: confidence</option></select>
</div>
<div id="legend">&#9617; = still masked; red outline = decided at this step; step colour runs violet (late)
 to red (early); confidence runs red (0) to green (1)</div>
<div id="verdict"></div>
<div id="grid"></div>
<div id="tokens"></div>
<script id="d1-data" type="application/json">{data}</script>
<script>{_JS}</script>
</body></html>
"""


def write_trace_html(trace_file: str | Path, output: str | Path) -> Path:
    """Read a trace file (or a folder's one trace file) and write its viewer to `output`, atomically."""
    trace_file = trace_file_at(trace_file)
    items = read_traces(trace_file)
    output = Path(output)
    if output.is_dir():
        raise IsADirectoryError(f"--output {str(output)!r} is a folder; give a file name such as trace.html.")
    page = render_html(items, f"d1 trace: {Path(trace_file).name}")
    output.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(output, page)
