"""The neuron viewer in the browser: a standard-library web app over the artifacts on disk.

    python summary_viewer.py --model toy-gpt2-tiny-a [--port 8000] [--host 127.0.0.1]

Routes (everything else is 404):
    /                                  the neuron table (sorted / filtered client-side in JavaScript)
    /api/neurons                       the neuron dataframe as JSON {model, columns, rows, threshold}
    /neuron/<layer>/<neuron>           one neuron: every viewer_data panel, text examples, its row of
                                       the neuron df, best-correlated neuron of each other seed,
                                       composition partners, explanations, intervention results
    /plot/<panel>/<layer>/<neuron>.png one panel, drawn by the same viewer_data functions as notebooks
    /api/examples/<layer>/<neuron>     the max-activating examples of each summarised dataset with
                                       the neuron's activation at every token of their windows (the
                                       model runs each example's row up to the window's end)
    /api/activate/<layer>/<neuron>?text=...   the text typed on a neuron page, tokenised with the
                                       model's tokenizer (BOS first, as dataset rows), run through the
                                       model: JSON {tokens [str], ids [int], values [float]: the
                                       neuron's mlp.hook_post at each token, truncated}. The model is
                                       loaded once per name on the viewer's device (--device); one
                                       forward at a time per model; at most MAX_TEXT_TOKENS tokens.
Every route takes an optional ?model=<name> (default: the --model); the name must be one of the
models found on disk, and artifacts are located only through paths.py from discovered names, so
no part of a URL is ever joined into a file path. layer / neuron are ints checked against the
model's shape. Loading is lazy and memory-mapped (paths.torch_load(mmap=True): weights_only): a
neuron page reads only that neuron's slices; rendered pages and PNGs of recent neurons are cached.

Security: the server binds 127.0.0.1 unless --host names another interface explicitly (then it
serves whoever can reach that interface: read-only, but everything the artifacts contain). On a
loopback address it also refuses requests whose Host header is not a loopback name (DNS rebinding).
"""
from __future__ import annotations

import html
import io
import json
import os
import re
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import torch

from . import paths, viewer_data as vd
from .activation_summary import BIN_COUNTS
from .errors import UserError
from .flags import StageConfig

from .neuron_df import UNIVERSAL_THRESHOLD  # noqa: E402  (the one definition)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_TEXT_CHARS = 4000   # typed text: characters read, then tokens run (BOS included)
MAX_TEXT_TOKENS = 256


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: bound there, the server checks the Host header (DNS rebinding)."""
    import ipaddress

    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
PANELS = ("activation_percentiles", "activation_distribution", "top_tokens_max", "top_tokens_mean",
          "max_activating_examples", "weight_cosines", "top_vocab_tokens", "top_neurons", "attention_composition")
N_PARTNERS = 5  # composition partners listed per kind
PNG_DPI = 72
_RENDER_LOCK = threading.Lock()  # matplotlib is not thread-safe; the server is threaded


class _LRU:
    """A small thread-safe least-recently-used cache; a value asked for while it is being made is made
    once (the second caller waits for the first: a prefetched panel and the browser's request for it)."""

    def __init__(self, size: int):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def __contains__(self, key) -> bool:
        with self.lock:
            return key in self.items

    def get(self, key, make):
        with self.lock:
            fut = self.items.get(key)
            mine = fut is None
            if mine:
                fut = self.items[key] = Future()
                while len(self.items) > self.size:
                    self.items.popitem(last=False)
            else:
                self.items.move_to_end(key)
        if mine:
            try:
                fut.set_result(make())
            except BaseException as e:  # not cached: the next request tries again
                with self.lock:
                    if self.items.get(key) is fut:
                        del self.items[key]
                fut.set_exception(e)
        return fut.result()


class _DatasetRows:
    """tokens[seq] of a saved token dataset, read one row at a time: the [n_seq, ctx] interface
    viewer_data.max_activating_examples needs, without loading the whole dataset."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.shape = (len(dataset), len(dataset[0]["tokens"]) if len(dataset) else 0)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(self.dataset[int(i)]["tokens"], dtype=torch.long)


# Artifacts of one model ---------------------------------------------------------------------------

class ModelArtifacts:
    """What the pipeline wrote about one model, loaded on first use (memory-mapped tensors)."""

    def __init__(self, model: str):
        self.model = model
        self.dirname = paths.model_dirname(model)
        self._lock = threading.RLock()
        self._forward = threading.Lock()  # the live model: one load, one forward at a time (pages don't wait)
        self._cache: dict = {}

    def _live_model(self, device: str):
        """The model itself, loaded on first use (typed text, example contexts); call under self._forward."""
        from .models import load_model

        if "live_model" not in self._cache:
            self._cache["live_model"] = load_model(self.model, device=device)
        return self._cache["live_model"]

    def example_contexts(self, layer: int, neuron: int, device: str = "cpu", n: int = 10) -> list[dict]:
        """The max-activating examples of every summarised dataset with the activation of every token
        of their window: [{dataset, examples: [{value, pos, tokens [str], values [float]}]}]. Each
        example's row runs up to the window's end (causal: the same values as the whole row)."""
        from .capture import mlp_activations

        summaries, out = self.summaries(), []
        for short, full in self.full_names().items():
            rows = self.token_rows(full)
            exs = vd.max_activating_examples(summaries[short], rows, layer, neuron, n)
            with self._forward:
                model = self._live_model(device)
                tok = model.tokenizer
                listed = []
                for e in exs:
                    start, end = e["pos"] - len(e["before"]), e["pos"] + 1 + len(e["after"])
                    ids = rows[e["seq"]][:end][None]                                   # [1, end]
                    acts = mlp_activations(model, ids, "mlp.hook_post", layers=[layer])[0, start:end, 0, neuron]
                    listed.append({"value": e["value"], "pos": len(e["before"]),
                                   "tokens": [tok.decode([i]) for i in ids[0, start:end].tolist()],
                                   "values": acts.float().cpu().tolist()})
            out.append({"dataset": full, "examples": listed})
        return out

    def activate(self, text: str, layer: int, neuron: int, device: str = "cpu") -> dict:
        """The neuron's activation at every token of `text` (see the /api/activate route)."""
        from .capture import mlp_activations

        with self._forward:
            model = self._live_model(device)
            tok = model.tokenizer
            ids = tok.encode(text[:MAX_TEXT_CHARS], add_special_tokens=False)
            if tok.bos_token_id is not None:
                ids = [tok.bos_token_id] + ids
            limit = min(MAX_TEXT_TOKENS, getattr(model.cfg, "n_ctx", None) or MAX_TEXT_TOKENS)
            truncated = len(ids) > limit or len(text) > MAX_TEXT_CHARS
            ids = ids[:limit]
            acts = mlp_activations(model, torch.tensor([ids]), "mlp.hook_post", layers=[layer])  # [1, pos, 1, D]
            values = acts[0, :, 0, neuron].float().cpu().tolist()
        return {"tokens": [tok.decode([i]) for i in ids], "ids": ids, "values": values, "truncated": truncated,
                "layer": layer, "neuron": neuron}

    def trees(self) -> dict[str, list[Path]]:
        """The artifact folders / files the viewer reads for this model, by section."""
        d = self.dirname
        pairs = [paths.results_dir() / n for n in paths.artifact_names(paths.results_dir()) if n.startswith(d + "+")]
        return {"summaries": [paths.summary_dir() / d / "activations"], "weights": [paths.summary_dir() / d / "weights"],
                "neuron_df": [paths.neuron_df_path(self.model), paths.interpretable_neurons_path(self.model)],
                "correlations": pairs, "explanations": [paths.explanation_dir() / d],
                "interventions": [paths.intervention_dir() / d]}

    def check_links(self, section: str) -> None:
        """UserError when a symlink among `section`'s artifacts leads outside every artifact root (a shared
        results folder must not let the viewer read, say, ~/.ssh): checked once per section."""
        def make():
            roots = [r.resolve() for r in (paths.dataset_dir(), paths.results_dir(), paths.summary_dir(),
                                           paths.activation_dir(), paths.intervention_dir(), paths.dataframe_dir(),
                                           paths.explanation_dir(), paths.report_dir())]
            inside = lambda p: any(p == r or r in p.parents for r in roots)  # noqa: E731
            for tree in self.trees()[section]:
                if tree.exists() and not inside(tree.resolve()):  # the folder itself, or a parent, links out
                    return f"{tree} lies outside the artifact folders (at {tree.resolve()}): refused"
                found = [tree] if tree.is_symlink() else []
                if tree.is_dir() and not tree.is_symlink():
                    for top, dirs, files in os.walk(tree):
                        found += [Path(top) / n for n in dirs + files if (Path(top) / n).is_symlink()]
                for link in found:
                    if not inside(link.resolve()):
                        return f"{link} links outside the artifact folders (to {link.resolve()}): refused"
            return None
        why = self._once(("links", section), make)
        if why:
            raise UserError(why)

    def _once(self, key, make):
        with self._lock:
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    # commands that produce each artifact, for the notes shown where one is missing
    def cmd_summary(self):
        return f"python summary.py --model {self.model} --token_dataset <dataset>"

    def cmd_weights(self):
        return f"python weights.py --model {self.model}"

    def cmd_neuron_df(self):
        return f"universal-neurons neuron-df --model {self.model} --others <seeds> --dataset <dataset>"

    def summaries(self) -> dict:
        """{short dataset name: {file stem: mmap tensor}}; {} when nothing is summarised."""
        def make():
            self.check_links("summaries")
            try:
                return vd.load_all_summaries(self.model)
            except UserError as e:
                if "refusing to load" in str(e) or "cannot read" in str(e):
                    raise  # a damaged or hostile file: said in its sections and panels, not "run summary.py"
                return {}
        return self._once("summaries", make)

    def full_names(self) -> dict[str, str]:
        return self._once("full_names", lambda: vd.full_dataset_names(self.model))

    def weights(self) -> dict:
        def make():
            self.check_links("weights")
            return vd.load_weights_summary(self.model)
        return self._once("weights", make)

    def vocab(self) -> list[str] | None:
        def make():
            try:
                return vd.get_tokenizer_and_decoded_vocab(self.model)[1]
            except Exception:  # no tokenizer for this name: panels with token labels show a note
                return None
        return self._once("vocab", make)

    def neuron_df(self):
        def make():
            from .neuron_df import load_neuron_df
            try:
                self.check_links("neuron_df")
                return load_neuron_df(self.model)
            except UserError as e:
                self._cache["neuron_df_note"] = str(e)
                return None
        return self._once("neuron_df", make)

    def neuron_df_json(self) -> bytes:
        """The dataframe as compact JSON (NaN -> null), made once."""
        def make():
            df = self.neuron_df()
            if df is None:
                note = self._cache.get("neuron_df_note", "")
                if "outside the artifact folders" not in note:
                    note = f"no neuron dataframe at {paths.neuron_df_path(self.model)}: run {self.cmd_neuron_df()}"
                body = {"model": self.model, "columns": [], "rows": [], "threshold": UNIVERSAL_THRESHOLD, "note": note}
                return json.dumps(body).encode()
            cols = {}
            for c in df.columns:  # 6 significant digits keep the JSON small (~5 MB for GPT2-small)
                v = df[c].to_numpy()
                if v.dtype.kind == "f":
                    with np.errstate(all="ignore"):
                        scale = 10.0 ** (5 - np.floor(np.log10(np.abs(v))))
                        scale[~np.isfinite(scale)] = 1.0
                        v = np.round(v * scale) / scale
                    cols[c] = [None if x != x else x for x in v.tolist()]
                else:
                    cols[c] = v.tolist()
            body = {"model": self.model, "columns": list(df.columns), "rows": [list(r) for r in zip(*cols.values())],
                    "threshold": UNIVERSAL_THRESHOLD}
            return json.dumps(body, separators=(",", ":")).encode()
        return self._once("neuron_df_json", make)

    def dims(self) -> tuple[int, int] | None:
        """(n_layers, d_mlp) from whichever artifact exists first; None when none does."""
        def make():
            def quiet(load):  # a refused or damaged source: try the next one (its section says why)
                try:
                    return load()
                except UserError:
                    return None
            s = quiet(self.summaries)
            if s:
                return tuple(next(iter(s.values()))[BIN_COUNTS].shape[:2])
            w = quiet(self.weights) or {}
            for key in ("k_comps", "q_comps", "v_comps", "o_comps"):
                if key in w:
                    return tuple(w[key].shape[:2])
            df = self.neuron_df()
            if df is not None and len(df):
                return int(df["layer"].max()) + 1, int(df["neuron"].max()) + 1
            return None
        return self._once("dims", make)

    def token_rows(self, full_name: str) -> _DatasetRows:
        """Raises UserError (with the command) when the token dataset is not on disk."""
        def make():
            from .models import model_family
            from .token_datasets import load_token_dataset
            return _DatasetRows(load_token_dataset(full_name, model_family(self.model)))
        return self._once(("tokens", full_name), make)

    def correlation_summaries(self) -> list[tuple[str, str, dict]]:
        """[(other model folder, dataset, mmap'd correlation_summary.pt)] of pearson.none found under results_dir()."""
        from .correlations import SUMMARY_FILES, read_correlation_summary

        def make():
            self.check_links("correlations")
            root = paths.results_dir()
            out = []
            for name in paths.artifact_names(root):
                pair = root / name
                first, sep, other = name.partition("+")
                if not sep or first != self.dirname:
                    continue
                for ds in map(pair.joinpath, paths.artifact_names(pair)):
                    if (ds / "pearson.none" / SUMMARY_FILES[0]).is_file():
                        out.append((other, ds.name, read_correlation_summary(ds / "pearson.none", mmap=True)))
            return out
        return self._once("correlations", make)

    def explanation_datasets(self) -> list[str]:
        root = paths.explanation_dir() / self.dirname
        return self._once("explanation_datasets", lambda: sorted(
            name for name in paths.artifact_names(root) if (root / name / "token_feature").is_dir()))


def _vr_row(path: Path, label: str):
    """Row `label` ('l.n') of an explain.py variance-reduction CSV as a one-row DataFrame, or None.

    Only that line is parsed (a layer's CSV has d_mlp rows x every feature: hundreds of MB for GPT-2).
    """
    import pandas as pd

    with open(path, encoding="utf-8") as f:
        header = f.readline()
        for line in f:
            if line.startswith(label + ","):
                return pd.read_csv(io.StringIO(header + line), index_col=0, dtype={0: str})
    return None


# Pages --------------------------------------------------------------------------------------------

STYLE = """
body{font-family:system-ui,sans-serif;margin:1em 2em;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f3f3f3;cursor:pointer;position:sticky;top:0}.note{background:#fff3cd;padding:6px 10px;
border-left:4px solid #e0a800;font-family:monospace;white-space:pre-wrap}img{max-width:100%;display:block;
margin:8px 0}.controls>*{margin-right:10px}h2{margin-top:1.4em;border-bottom:1px solid #ccc}
a{color:#0645ad}
"""


def _page(title: str, body: str) -> bytes:
    return (f"<!doctype html><html><head><meta charset='utf-8'><link rel='icon' href='data:,'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>").encode()


def _note(text: str) -> str:
    return f"<div class='note'>{html.escape(text)}</div>"


def _q(model: str) -> str:
    """The query string naming a model, URL-encoded (and still safe inside an HTML attribute)."""
    from urllib.parse import quote

    return "?model=" + quote(model, safe="")


def _script_json(value) -> str:
    """JSON that cannot end a <script> element or open a comment, whatever strings it holds."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


TABLE_JS = r"""
const st = {rows: [], cols: [], view: [], sort: null, desc: true, page: 0, per: 100};
const $ = id => document.getElementById(id);
function fmt(v){ return v === null ? '' : (typeof v === 'number' && !Number.isInteger(v) ? v.toPrecision(4) : v); }
function apply(){
  const c = st.cols, li = c.indexOf('layer'), ni = c.indexOf('neuron'), ei = c.indexOf('excess_corr');
  const q = $('search').value.trim(), uni = $('universal').checked;
  const fcol = c.indexOf($('fcol').value), lo = parseFloat($('fmin').value), hi = parseFloat($('fmax').value);
  let m = q.match(/^(\d+)(?:\.(\d*))?$/);
  st.view = st.rows.filter(r => {
    if (uni && !(r[ei] > st.threshold)) return false;
    if (m && (r[li] != +m[1] || (m[2] !== undefined && m[2] !== '' && !String(r[ni]).startsWith(m[2])))) return false;
    if (fcol >= 0 && !isNaN(lo) && !(r[fcol] >= lo)) return false;
    if (fcol >= 0 && !isNaN(hi) && !(r[fcol] <= hi)) return false;
    return true;
  });
  if (st.sort !== null) {
    const i = st.sort, s = st.desc ? -1 : 1;
    st.view.sort((a, b) => (a[i] === null) - (b[i] === null) || s * (a[i] - b[i]));
  }
  st.page = 0; render();
}
function render(){
  const n = st.view.length, pages = Math.max(1, Math.ceil(n / st.per));
  st.page = Math.min(st.page, pages - 1);
  const li = st.cols.indexOf('layer'), ni = st.cols.indexOf('neuron');
  const part = st.view.slice(st.page * st.per, (st.page + 1) * st.per);
  // every artifact string goes in as text (textContent), never as HTML
  const el = (tag, props) => Object.assign(document.createElement(tag), props || {});
  const table = $('table'); table.replaceChildren();
  const hr = el('tr');
  st.cols.forEach((c, i) => { const th = el('th', {textContent: c + (st.sort === i ? (st.desc ? ' ▼' : ' ▲') : '')});
    th.dataset.i = i; hr.appendChild(th); });
  table.appendChild(hr);
  for (const r of part) {
    const tr = el('tr');
    r.forEach((v, i) => {
      const td = el('td');
      const l = Number(r[li]), k = Number(r[ni]);
      if (i === ni && Number.isInteger(l) && Number.isInteger(k))
        td.appendChild(el('a', {className: 'nlink', href: `/neuron/${l}/${k}${MODEL_Q}`, textContent: String(v)}));
      else td.textContent = String(fmt(v));
      tr.appendChild(td);
    });
    table.appendChild(tr);
  }
  $('count').textContent = `${n} of ${st.rows.length} neurons, page ${st.page + 1} / ${pages}`;
  for (const th of $('table').querySelectorAll('th')) th.onclick = () => {
    const i = +th.dataset.i; st.desc = st.sort === i ? !st.desc : true; st.sort = i; apply(); };
}
fetch('/api/neurons' + MODEL_Q).then(r => r.json()).then(d => {
  st.rows = d.rows; st.cols = d.columns; st.threshold = d.threshold;
  if (d.note) { $('msg').innerHTML = ''; $('msg').appendChild(Object.assign(document.createElement('div'), {className: 'note', textContent: d.note})); }
  $('fcol').replaceChildren(Object.assign(document.createElement('option'), {value: '', textContent: '(column)'}),
    ...d.columns.map(c => Object.assign(document.createElement('option'), {value: c, textContent: c})));
  const ec = d.columns.indexOf('excess_corr'); if (ec >= 0) { st.sort = ec; }
  apply(); $('status').textContent = 'ready';
});
for (const id of ['search', 'universal', 'fcol', 'fmin', 'fmax']) $(id).addEventListener('input', apply);
$('prev').onclick = () => { st.page = Math.max(0, st.page - 1); render(); };
$('next').onclick = () => { st.page += 1; render(); };
$('go').onsubmit = e => { e.preventDefault(); const m = $('goto').value.trim().match(/^(\d+)\.(\d+)$/);
  if (m) location.href = `/neuron/${m[1]}/${m[2]}${MODEL_Q}`; };
"""


def table_page(art: ModelArtifacts) -> bytes:
    body = (f"<h1>Neurons of {html.escape(art.model)}</h1><div id='msg'></div><div class='controls'>"
            "<input id='search' placeholder='search L or L.N' size=12>"
            f"<label><input type='checkbox' id='universal'> universal only (excess_corr &gt; {UNIVERSAL_THRESHOLD})</label>"
            "<select id='fcol'></select><input id='fmin' placeholder='min' size=6><input id='fmax' placeholder='max' size=6>"
            "<button id='prev'>&lt;</button><button id='next'>&gt;</button><span id='count'></span>"
            "<form id='go' style='display:inline'><input id='goto' placeholder='open L.N' size=8></form>"
            "<span id='status' style='color:#999'>loading</span></div><table id='table'></table>"
            f"<script>const MODEL_Q = {_script_json(_q(art.model))};{TABLE_JS}</script>")
    return _page(f"{art.model} neurons", body)


def _df_row_html(art: ModelArtifacts, layer: int, neuron: int) -> str:
    df = art.neuron_df()
    if df is None:
        return _note(f"no neuron dataframe at {paths.neuron_df_path(art.model)}: run {art.cmd_neuron_df()}")
    row = df[(df["layer"] == layer) & (df["neuron"] == neuron)]
    if row.empty:
        return _note(f"neuron {layer}.{neuron} has no row in {paths.neuron_df_path(art.model)}")
    r = row.iloc[0]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in r.index)
    cells = "".join(f"<td>{html.escape(f'{v:.4g}' if isinstance(v, float) else str(v))}</td>" for v in r.tolist())
    return f"<div style='overflow-x:auto'><table id='dfrow'><tr>{head}</tr><tr>{cells}</tr></table></div>"


def _correlation_html(app: "ViewerApp", art: ModelArtifacts, layer: int, neuron: int, d_mlp: int) -> str:
    found = art.correlation_summaries()
    if not found:
        return _note(f"no correlation summaries under {paths.results_dir()}/{art.dirname}+<other>/: run "
                     f"python correlations_fast.py --model_1_name {art.model} --model_2_name <other seed> "
                     "--token_dataset <dataset> --baseline none")
    flat = layer * d_mlp + neuron
    rows = []
    for other, ds, s in found:
        corr, ix = float(s["max_corr"][flat]), int(s["max_corr_ix"][flat])
        other_art = app.artifacts(other) if other in app.models() else None
        other_d = other_art.dims()[1] if other_art is not None and other_art.dims() else d_mlp
        if ix < 0 or corr != corr:
            partner = "(dead neuron)"
        else:
            ol, on = divmod(ix, other_d)
            partner = (f"<a class='corr-link' href='/neuron/{ol}/{on}{_q(other)}'>{ol}.{on}</a>" if other_art is not None
                       else f"{ol}.{on} (no summaries of {html.escape(other)} to show)")
        rows.append(f"<tr><td>{html.escape(other)}</td><td>{html.escape(ds)}</td><td>{corr:.4f}</td><td>{partner}</td></tr>")
    return ("<table id='corr'><tr><th>other seed</th><th>dataset</th><th>max corr</th><th>neuron</th></tr>"
            + "".join(rows) + "</table>")


def _composition_html(art: ModelArtifacts, layer: int, neuron: int) -> str:
    comps = art.weights().get("neuron_comps")
    if comps is None:
        return _note(f"no neuron compositions (neuron_comps.pt): run {art.cmd_weights()}")
    q = _q(art.model)
    rows = []
    for kind in vd.NEURON_KINDS:
        if kind not in comps:
            continue
        c = comps[kind]
        D = c["top_neuron_ix"].shape[1]
        links = []
        for i, v in zip(c["top_neuron_ix"][layer, neuron, :N_PARTNERS].tolist(),
                        c["top_neuron_value"][layer, neuron, :N_PARTNERS].tolist()):
            if i >= 0:
                links.append(f"<a class='comp-link' href='/neuron/{i // D}/{i % D}{q}'>{i // D}.{i % D}</a> ({v:.3f})")
        rows.append(f"<tr><th>{kind}</th><td style='text-align:left'>{', '.join(links)}</td></tr>")
    return "<table id='comps'>" + "".join(rows) + "</table>"


def _explanations_html(art: ModelArtifacts, layer: int, neuron: int) -> str:
    art.check_links("explanations")
    from .heuristic_explanation import top_features
    from .explanations import PREV_VR_FILE, VR_FILE, layer_dir

    datasets = art.explanation_datasets()
    if not datasets:
        return _note(f"no explanations under {paths.explanation_dir() / art.dirname}: run "
                     f"python explain.py --model {art.model} --dataset <dataset> --feature_type token")
    label = f"{layer}.{neuron}"
    parts = []
    for ds in datasets:
        folder = layer_dir(art.model, ds, "token", layer)
        found = [(pos, _vr_row(folder / f, label)) for pos, f in (("current", VR_FILE), ("previous", PREV_VR_FILE))
                 if (folder / f).is_file()]
        rows = [(pos, r) for pos, vr in found if vr is not None for r in top_features(vr, 5).itertuples()]
        if not rows:
            parts.append(f"<p>{html.escape(ds)}: no explanation of {label} (layer not explained, or a dead neuron)</p>")
            continue
        cells = "".join(f"<tr><td>{pos}</td><td>{r.rank}</td><td style='text-align:left'>{html.escape(repr(r.feature))}"
                        f"</td><td>{r.variance_reduction:.4f}</td></tr>" for pos, r in rows)
        parts.append(f"<p>{html.escape(ds)}</p><table class='features'><tr><th>token</th><th>rank</th>"
                     f"<th>feature</th><th>variance reduction</th></tr>{cells}</table>")
    return "".join(parts)


def _interventions_html(art: ModelArtifacts, layer: int, neuron: int) -> str:
    art.check_links("interventions")
    from .interventions import read_summary

    root = paths.intervention_dir() / art.dirname
    parts = []
    for ds in map(root.joinpath, paths.artifact_names(root)):
        for f in sorted((ds / f"{layer}.{neuron}").glob("summary_*.csv")):
            df = read_summary(f)
            parts.append(f"<p>{html.escape(ds.name)}: {html.escape(f.stem)}</p>"
                         + df.to_html(index=False, float_format=lambda x: f"{x:.4g}", classes="intervention"))
    if not parts:
        return _note(f"no intervention results for {layer}.{neuron}: run python entropy_intervention.py --model "
                     f"{art.model} --token_dataset <dataset> --neuron_subset {layer}.{neuron}")
    return "".join(parts)


def _examples_html(art: ModelArtifacts, layer: int, neuron: int, n: int = 10) -> str:
    summaries, vocab = art.summaries(), art.vocab()
    if not summaries:
        return _note(f"no activation summaries: run {art.cmd_summary()}")
    if vocab is None:
        return _note(f"no tokenizer found for {art.model}: the text examples need it")
    parts = []
    for short, full in art.full_names().items():
        try:
            rows = art.token_rows(full)
            ex = vd.max_activating_examples(summaries[short], rows, layer, neuron, n)
            parts.append(f"<h3>{html.escape(full)}</h3>" + vd.examples_html(ex, vocab))
        except UserError as e:
            parts.append(f"<h3>{html.escape(full)}</h3>" + _note(f"the token dataset is needed for text examples: {e}"))
    return "".join(parts)


TYPEIN_JS = r"""
function colour(out, tokens, values, top){
  tokens.forEach((t, i) => {
    const s = document.createElement('span'), v = values[i], a = Math.min(1, Math.abs(v) / top);
    s.className = 'tok'; s.textContent = t; s.title = v.toFixed(4); s.dataset.value = v;
    s.style.background = v >= 0 ? `rgba(255,140,0,${a})` : `rgba(30,110,255,${a})`;
    out.appendChild(s);
  });
}
async function runText(){
  const box = document.getElementById('typein'), out = document.getElementById('typein_out');
  const r = await fetch(box.dataset.url + '&text=' + encodeURIComponent(box.value));
  const d = await r.json();
  out.textContent = '';
  if (d.error){ out.textContent = d.error; return; }
  colour(out, d.tokens, d.values, Math.max(1e-9, ...d.values.map(v => Math.abs(v))));
  if (d.truncated){ const n = document.createElement('div'); n.className = 'note'; n.textContent = 'truncated'; out.appendChild(n); }
}
async function runExamples(){
  const btn = document.getElementById('examples_run'), out = document.getElementById('examples_out');
  const d = await (await fetch(btn.dataset.url)).json();
  out.textContent = '';
  if (d.error){ out.textContent = d.error; return; }
  d.forEach(ds => {
    const h = document.createElement('h3'); h.textContent = ds.dataset; out.appendChild(h);
    const top = Math.max(1e-9, ...ds.examples.flatMap(e => e.values.map(v => Math.abs(v))));
    ds.examples.forEach(e => {
      const line = document.createElement('div'); line.className = 'ctx';
      line.style.fontFamily = 'monospace'; line.style.whiteSpace = 'pre';
      colour(line, e.tokens.map(t => t.replace(/\n/g, '\u23ce')), e.values, top); out.appendChild(line);
    });
  });
}
"""


def _typein_html(art: ModelArtifacts, layer: int, neuron: int) -> str:
    """A text box: the typed text is run through the model and each token coloured by the activation
    (orange positive, blue negative, value on hover); drawn client-side with textContent only."""
    url = html.escape(f"/api/activate/{layer}/{neuron}{_q(art.model)}", quote=True)
    return (f"<textarea id='typein' rows='3' cols='80' maxlength='{MAX_TEXT_CHARS}' data-url='{url}'></textarea>"
            f"<br><button id='typein_run' onclick='runText()'>run</button> (at most {MAX_TEXT_TOKENS} tokens)"
            f"<pre id='typein_out' style='white-space:pre-wrap'></pre><script>{TYPEIN_JS}</script>")


def neuron_page(app: "ViewerApp", art: ModelArtifacts, layer: int, neuron: int) -> bytes:
    q = html.escape(_q(art.model), quote=True)
    d_mlp = art.dims()[1]
    imgs = "".join(f"<h3>{p.replace('_', ' ')}</h3><img class='panel' alt='{p}' "
                   f"src='/plot/{p}/{layer}/{neuron}.png{q}'>" for p in PANELS)
    L, D = art.dims()
    nav = [f"<a href='/{q}'>table</a>"]
    if neuron > 0:
        nav.append(f"<a href='/neuron/{layer}/{neuron - 1}{q}'>&larr; {layer}.{neuron - 1}</a>")
    if neuron + 1 < D:
        nav.append(f"<a href='/neuron/{layer}/{neuron + 1}{q}'>{layer}.{neuron + 1} &rarr;</a>")
    def section(fn, *a) -> str:  # one unreadable artifact: a note in its section, the page still serves
        try:
            return fn(*a)
        except Exception as e:
            return _note(f"this section's artifact could not be read ({type(e).__name__}: {e})")

    body = (f"<p>{' | '.join(nav)}</p><h1>{html.escape(art.model)} neuron {layer}.{neuron}</h1>"
            f"<h2>Neuron dataframe</h2>{section(_df_row_html, art, layer, neuron)}"
            f"<h2>Best-correlated neuron in each other seed</h2>{section(_correlation_html, app, art, layer, neuron, d_mlp)}"
            f"<h2>Composition partners (top by weight cosine)</h2>{section(_composition_html, art, layer, neuron)}"
            f"<h2>Explanations (token features)</h2>{section(_explanations_html, art, layer, neuron)}"
            f"<h2>Interventions</h2>{section(_interventions_html, art, layer, neuron)}"
            f"<h2>Try a text</h2>{_typein_html(art, layer, neuron)}"
            f"<h2>Max-activating examples</h2>{section(_examples_html, art, layer, neuron)}"
            f"<p><button id='examples_run' data-url='{html.escape(f'/api/examples/{layer}/{neuron}' + _q(art.model), quote=True)}' "
            f"onclick='runExamples()'>colour every token of these contexts</button> (runs the model)</p>"
            f"<div id='examples_out'></div>"
            f"<h2>Panels</h2>{imgs}")
    return _page(f"{art.model} {layer}.{neuron}", body)


def panel_figure(art: ModelArtifacts, panel: str, layer: int, neuron: int):
    """The matplotlib Figure of one panel (as display_summary draws it), or a note figure naming the
    command that makes the missing artifact."""
    summaries, weights = art.summaries(), art.weights()
    needs_vocab = panel in ("top_tokens_max", "top_tokens_mean", "max_activating_examples", "top_vocab_tokens")
    vocab = art.vocab() if needs_vocab else None
    if needs_vocab and vocab is None:
        return vd.panel_note(f"no tokenizer found for {art.model}: this panel needs the token strings")
    if panel in ("activation_percentiles", "activation_distribution", "top_tokens_max", "top_tokens_mean",
                 "max_activating_examples") and not summaries:
        return vd.panel_note(f"no activation summaries: run {art.cmd_summary()}")
    if panel == "activation_percentiles":
        return vd.panel_activation_percentiles(summaries, layer, neuron)
    if panel == "activation_distribution":
        return vd.panel_activation_distribution(summaries, layer, neuron)
    if panel in ("top_tokens_max", "top_tokens_mean"):
        stat = panel.rsplit("_", 1)[1]
        if not any(vd.top_tokens(s, layer, neuron, stat, 1) for s in summaries.values()):
            return vd.panel_note(f"no per-token statistics: rerun {art.cmd_summary()} with --top_vocab_k_truncate 100 (not 0)")
        return vd.panel_top_tokens(summaries, layer, neuron, vocab, stat)
    if panel == "max_activating_examples":
        short, full = next(iter(art.full_names().items()))
        try:
            rows = art.token_rows(full)
        except UserError as e:
            return vd.panel_note(f"the token dataset is needed for text examples: {e}")
        ex = vd.max_activating_examples(summaries[short], rows, layer, neuron)
        return vd.panel_max_activating_examples(ex, vocab, f"L{layer}.{neuron}: max-activating examples ({full})")
    if panel == "weight_cosines":
        if "vocab_comps" not in weights and "neuron_comps" not in weights:
            return vd.panel_note(f"no weight summaries (vocab_comps.pt / neuron_comps.pt): run {art.cmd_weights()}")
        return vd.panel_weight_cosine_distributions(weights, layer, neuron)
    if panel == "top_vocab_tokens":
        if "vocab_comps" not in weights:
            return vd.panel_note(f"no vocabulary compositions (vocab_comps.pt): run {art.cmd_weights()}")
        return vd.panel_top_vocab_tokens(weights, layer, neuron, vocab)
    if panel == "top_neurons":
        if "neuron_comps" not in weights:
            return vd.panel_note(f"no neuron compositions (neuron_comps.pt): run {art.cmd_weights()}")
        return vd.panel_top_neurons(weights, layer, neuron)
    if not any(f"{k}_comps" in weights for k in vd.ATTN_KINDS):
        return vd.panel_note(f"no attention compositions (k/q/v/o_comps.pt): run {art.cmd_weights()}")
    return vd.panel_attention_composition(weights, layer, neuron)


def render_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PNG_DPI)  # glyph warnings: filtered by viewer_data
    return buf.getvalue()


# The server ---------------------------------------------------------------------------------------

class ViewerApp:
    """Routing and caches, independent of the socket (tests call `handle(path)` directly)."""

    def __init__(self, model: str, cache_size: int = 8, render_workers: int = 0, device: str = "cpu"):
        """render_workers > 0: panels are drawn in that many processes side by side (matplotlib is not
        thread-safe, so in one process they are drawn one at a time). device: where typed text runs."""
        self.model, self.device = model, device
        self._arts: dict[str, ModelArtifacts] = {}
        self._lock = threading.Lock()
        self.pages = _LRU(cache_size)
        self.pngs = _LRU(cache_size * len(PANELS))
        self._pool = None
        # A neuron page starts drawing its panels before the browser asks for them (one thread per render
        # process, at most two pages' panels queued: clicking through neurons does not pile up work).
        self._prefetch = ThreadPoolExecutor(max(1, render_workers), thread_name_prefix="panel-prefetch")
        self._queued = threading.Semaphore(2 * len(PANELS))
        if render_workers > 0:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            roots = {var: str(fn()) for var, fn in _ROOTS.items()}
            self._new_pool = lambda: ProcessPoolExecutor(render_workers, mp.get_context("spawn"), _worker_init, (roots,))
            self._pool = self._new_pool()

    def models(self) -> list[str]:
        """The default model plus every model folder with summaries or a neuron dataframe."""
        found = {self.model}
        if paths.summary_dir().is_dir():
            found |= set(paths.artifact_names(paths.summary_dir()))
        df_dir = paths.dataframe_dir() / "neuron_dfs"
        if df_dir.is_dir():
            found |= {p.stem for p in df_dir.glob("*.csv")}
        return sorted(found)

    def artifacts(self, model: str) -> ModelArtifacts:
        with self._lock:
            if model not in self._arts:
                self._arts[model] = ModelArtifacts(model)
            return self._arts[model]

    def handle(self, raw_path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a request path (with query)."""
        url = urlsplit(raw_path)
        query = parse_qs(url.query)
        model = query.get("model", [self.model])[0]
        if model not in self.models():
            return self.not_found(f"unknown model {model!r}")
        art = self.artifacts(model)
        path = url.path
        if path == "/":
            return 200, "text/html; charset=utf-8", table_page(art)
        if path == "/api/neurons":
            return 200, "application/json", art.neuron_df_json()
        m = re.fullmatch(r"/neuron/(\d{1,5})/(\d{1,7})", path)
        if m:
            ln = self._check(art, int(m[1]), int(m[2]))
            if isinstance(ln, tuple) and len(ln) == 3:
                return ln
            page = self.pages.get((model, *ln), lambda: neuron_page(self, art, *ln))
            self.prefetch_panels(art, *ln)
            return 200, "text/html; charset=utf-8", page
        m = re.fullmatch(r"/api/activate/(\d{1,5})/(\d{1,7})", path)
        if m:
            ln = self._check(art, int(m[1]), int(m[2]))
            if isinstance(ln, tuple) and len(ln) == 3:
                return ln
            text = query.get("text", [""])[0]
            if not text.strip():
                return 400, "application/json", json.dumps({"error": "no text"}).encode()
            try:
                out = art.activate(text, *ln, device=self.device)
            except UserError as e:
                return 400, "application/json", json.dumps({"error": str(e)}).encode()
            return 200, "application/json", json.dumps(out).encode()
        m = re.fullmatch(r"/api/examples/(\d{1,5})/(\d{1,7})", path)
        if m:
            ln = self._check(art, int(m[1]), int(m[2]))
            if isinstance(ln, tuple) and len(ln) == 3:
                return ln
            try:
                out = art.example_contexts(*ln, device=self.device)
            except UserError as e:
                return 400, "application/json", json.dumps({"error": str(e)}).encode()
            return 200, "application/json", json.dumps(out).encode()
        m = re.fullmatch(r"/plot/([a-z_]{1,40})/(\d{1,5})/(\d{1,7})\.png", path)
        if m and m[1] in PANELS:
            ln = self._check(art, int(m[2]), int(m[3]))
            if isinstance(ln, tuple) and len(ln) == 3:
                return ln
            return 200, "image/png", self.png(art, m[1], *ln)
        return self.not_found("no such page")

    def _check(self, art: ModelArtifacts, layer: int, neuron: int):
        dims = art.dims()
        if dims is None:
            body = _page("no artifacts", _note(f"nothing found for {art.model}: run {art.cmd_summary()} "
                                                f"and {art.cmd_weights()}"))
            return 404, "text/html; charset=utf-8", body
        if not (layer < dims[0] and neuron < dims[1]):
            return self.not_found(f"neuron {layer}.{neuron} is out of range ({dims[0]} layers x {dims[1]} neurons)")
        return layer, neuron

    def png(self, art: ModelArtifacts, panel: str, layer: int, neuron: int) -> bytes:
        """One panel's PNG, drawn once and cached (a request while it is drawn waits for that drawing)."""
        return self.pngs.get((art.model, panel, layer, neuron), lambda: self._png(art, panel, layer, neuron))

    def prefetch_panels(self, art: ModelArtifacts, layer: int, neuron: int) -> None:
        """Queue the drawing of the neuron's panels not yet cached; skipped while the queue is full."""
        for panel in PANELS:
            if (art.model, panel, layer, neuron) in self.pngs or not self._queued.acquire(blocking=False):
                continue

            def draw(panel=panel):
                try:
                    self.png(art, panel, layer, neuron)
                except Exception:  # the browser's own request reports it
                    pass
                finally:
                    self._queued.release()

            try:
                self._prefetch.submit(draw)
            except RuntimeError:  # closed
                self._queued.release()

    def _png(self, art, panel, layer, neuron) -> bytes:
        if self._pool is not None:
            from concurrent.futures.process import BrokenProcessPool

            try:
                return self._pool.submit(_render_in_worker, art.model, panel, layer, neuron).result()
            except BrokenProcessPool:  # a worker was killed (e.g. out of memory): start new ones
                with self._lock:
                    old, self._pool = self._pool, self._new_pool()
                old.shutdown(wait=False, cancel_futures=True)
        return _render_here(art, panel, layer, neuron)

    def close(self) -> None:
        self._prefetch.shutdown(wait=False, cancel_futures=True)
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    @staticmethod
    def not_found(message: str):
        return 404, "text/html; charset=utf-8", _page("not found", f"<h1>404</h1>{_note(message)}")


def _render_here(art, panel, layer, neuron) -> bytes:
    with _RENDER_LOCK:
        try:
            fig = panel_figure(art, panel, layer, neuron)
        except Exception as e:  # one corrupt artifact: a note on its panel, not a 500 page
            fig = vd.panel_note(f"this panel's artifact could not be read ({type(e).__name__}: {str(e)[:200]})")
        return render_png(fig)


class _Server(ThreadingHTTPServer):
    """A listen backlog for bursts of clients, at most MAX_THREADS requests handled at once (the rest
    wait in the backlog), and idle connections closed after IDLE_TIMEOUT_S (Handler.timeout)."""

    request_queue_size = 128
    daemon_threads = True
    MAX_THREADS = 64

    def __init__(self, *a, **kw):
        self._slots = threading.BoundedSemaphore(self.MAX_THREADS)
        super().__init__(*a, **kw)

    def process_request(self, request, client_address):
        self._slots.acquire()
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


IDLE_TIMEOUT_S = 15


_ROOTS = {"DATASET_DIR": paths.dataset_dir, "RESULTS_DIR": paths.results_dir, "SUMMARY_DIR": paths.summary_dir,
          "ACTIVATION_DIR": paths.activation_dir, "INTERVENTION_DIR": paths.intervention_dir,
          "DATAFRAME_DIR": paths.dataframe_dir, "EXPLANATION_DIR": paths.explanation_dir,
          "REPORT_DIR": paths.report_dir, "UNIVERSAL_NEURONS_ZOO": paths.zoo_dir}
_WORKER_ARTS: dict[str, ModelArtifacts] = {}


def _worker_init(roots: dict[str, str]) -> None:
    import os as _os
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server, which stops its workers
    try:  # Linux: a worker dies with its server, however the server ends (SIGTERM, SIGKILL)
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    _os.environ.update({k: str(Path(v).resolve()) for k, v in roots.items()})  # the server's folders exactly


def _render_in_worker(model: str, panel: str, layer: int, neuron: int) -> bytes:
    """A panel PNG drawn in a render process (its own memory-mapped artifacts, loaded once)."""
    art = _WORKER_ARTS.setdefault(model, ModelArtifacts(model))
    return _render_here(art, panel, layer, neuron)


def _handler(app: ViewerApp, loopback: bool):
    class Handler(BaseHTTPRequestHandler):
        server_version = "universal-neurons-viewer"
        timeout = IDLE_TIMEOUT_S  # a silent or slow client is dropped, its thread freed

        def do_GET(self):
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
            if loopback and not is_loopback(host):
                status, ctype, body = 403, "text/plain", b"forbidden host header\n"
            else:
                try:
                    status, ctype, body = app.handle(self.path)
                except Exception as e:  # a bug or a corrupt artifact: say so, keep serving
                    status, ctype, body = 500, "text/html; charset=utf-8", _page(
                        "error", f"<h1>500</h1>{_note(f'{type(e).__name__}: {e}')}")
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):  # quiet: the CLI prints the URL once
            pass

    return Handler


def make_server(model: str, host: str = "127.0.0.1", port: int = 0, render_workers: int = 0, device: str = "cpu"
                ) -> tuple[ThreadingHTTPServer, ViewerApp]:
    """A server for `model` (port 0: a free port, read it from server.server_address); render_workers:
    processes drawing panels side by side (`serve` uses one per core, up to 4); device: typed text's."""
    app = ViewerApp(model, render_workers=render_workers, device=device)
    try:
        server = _Server((host, port), _handler(app, is_loopback(host)))
    except OverflowError:
        raise UserError(f"--port must be in [0, 65535], got {port}") from None
    except OSError as e:
        raise UserError(f"cannot serve on {host}:{port}: {e.strerror} (another viewer running? pass --port 0 for a "
                        f"free port)") from None
    server.daemon_threads = True
    return server, app


@dataclass(kw_only=True)
class ViewConfig(StageConfig):
    """`universal-neurons view`: the neuron viewer over the working directory's artifacts; `run()` serves."""

    model: str = field(metadata={"required": True, "help": "the model whose neurons to browse"})
    port: int = field(default=8000, metadata={"type": int, "help": "TCP port (0: any free port)"})
    host: str = field(default="127.0.0.1", metadata={"help": "interface to bind (default loopback only; another "
                                                             "address serves other machines)"})
    device: str = field(default="cpu", metadata={"help": "where the model runs the text typed on a neuron page "
                                                         "(loaded on first use): cpu, cuda, auto"})

    def run(self) -> None:
        from .device import resolve_device

        serve(self.model, self.host, self.port, str(resolve_device(self.device)))


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu") -> None:
    if not any(paths.summary_dir().glob(f"{paths.model_dirname(model)}/*")) and \
            not paths.neuron_df_path(model).exists():
        print(f"note: no artifacts of {model} under {paths.summary_dir()} or {paths.dataframe_dir()} "
              f"(working directory {Path.cwd()}); pages will say which commands make them")
    server, app = make_server(model, host, port, render_workers=min(4, os.cpu_count() or 1), device=device)
    art = app.artifacts(model)
    # the tokenizer (transformers' import is slow) and the table JSON are made in the background,
    # so the server answers at once and the first neuron page does not wait for them
    threading.Thread(target=lambda: (art.neuron_df_json(), art.vocab()), daemon=True).start()
    h, p = server.server_address[:2]
    if not is_loopback(host):
        print(f"warning: serving on {host}, reachable from other machines")
    print(f"neuron viewer for {model}: http://{'localhost' if is_loopback(host) else h}:{p}/  (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.close()
