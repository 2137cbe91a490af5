"""The neuron viewer's web app without a browser: routes, content, 404s, notes, lazy loading."""
import html
import http.client
import json
import threading
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from universal_neurons import paths

MODEL, OTHER = "toy-gpt2-tiny-a", "toy-gpt2-tiny-b"
L, D = 2, 128
UNIVERSAL = [(0, 3), (1, 7)]
ENV = {"DATASET_DIR": "token_datasets", "RESULTS_DIR": "correlation_results", "SUMMARY_DIR": "summary_data",
       "INTERVENTION_DIR": "intervention_results", "DATAFRAME_DIR": "dataframes",
       "EXPLANATION_DIR": "results/explanations"}  # where explain.py writes with RESULTS_DIR unset


def write_zoo_artifacts(root: Path, tokenizer_model: str = MODEL) -> Path:
    """Fake artifacts of every stage for the tiny zoo under `root` (see benchmarks/viewer_bench.py)."""
    from benchmarks.viewer_bench import write_fake_artifacts
    from universal_neurons.models import load_tokenizer

    old = os.getcwd()
    root.mkdir(parents=True, exist_ok=True)
    os.chdir(root)
    try:
        tok = load_tokenizer(tokenizer_model)
        write_fake_artifacts(MODEL, [OTHER], L, D, len(tok), tok, "toy", universal=UNIVERSAL, n_seq=16, ctx=32)
    finally:
        os.chdir(old)
    return root


@pytest.fixture(scope="module")
def zoo_artifacts(tiny_zoo, tmp_path_factory):
    return write_zoo_artifacts(tmp_path_factory.mktemp("viewer"))


@pytest.fixture
def app(zoo_artifacts, monkeypatch):
    from universal_neurons.viewer import ViewerApp

    for var, sub in ENV.items():
        monkeypatch.setenv(var, str(zoo_artifacts / sub))
    return ViewerApp(MODEL)


def test_table_and_json(app):
    from analysis.neuron_df import NEURON_DF_COLUMNS

    assert app._arts == {}  # nothing is read before the first request
    status, ctype, body = app.handle("/")
    assert status == 200 and b"/api/neurons" in body and b"universal only" in body
    status, ctype, body = app.handle("/api/neurons")
    assert status == 200 and ctype == "application/json"
    d = json.loads(body)
    df = pd.read_csv(paths.neuron_df_path(MODEL))
    assert d["columns"] == NEURON_DF_COLUMNS and len(d["rows"]) == L * D
    ex = d["columns"].index("excess_corr")
    assert sorted((r[0], r[1]) for r in d["rows"] if r[ex] > d["threshold"]) == UNIVERSAL
    np.testing.assert_allclose(np.array(d["rows"], dtype=float), df.to_numpy(float), rtol=1e-5)
    assert "summaries" not in app.artifacts(MODEL)._cache  # the table never touches the summaries


def test_neuron_page_content(app):
    from universal_neurons.explanations import read_layer
    from universal_neurons.viewer import PANELS

    layer, neuron = 1, 7
    status, _, body = app.handle(f"/neuron/{layer}/{neuron}")
    page = body.decode()
    assert status == 200
    for p in PANELS:
        assert f"/plot/{p}/{layer}/{neuron}.png?model={MODEL}" in page
    # best-correlated neuron of the other seed, from its correlation summary
    s = torch.load(paths.correlation_path(MODEL, OTHER, "fake.code.64", "pearson", "none") / "correlation_summary.pt")
    ix = int(s["max_corr_ix"][layer * D + neuron])
    assert f"href='/neuron/{ix // D}/{ix % D}?model={OTHER}'>{ix // D}.{ix % D}</a>" in page
    assert f"{float(s['max_corr'][layer * D + neuron]):.4f}" in page
    # composition partners: top_neuron_ix of neuron_comps
    comps = torch.load(paths.weights_summary_path(MODEL) / "neuron_comps.pt")
    top = int(comps["in_out"]["top_neuron_ix"][layer, neuron, 0])
    assert f"href='/neuron/{top // D}/{top % D}?model={MODEL}'" in page
    # best explanation: the largest variance reduction of the row
    vr = read_layer(MODEL, "fake.code.64", "token", layer).loc[f"{layer}.{neuron}"]
    assert html.escape(repr(vr.idxmax())) in page and f"{vr.max():.4f}" in page
    # the df row and the text examples
    df = pd.read_csv(paths.neuron_df_path(MODEL))
    assert "id='dfrow'" in page and f"{df.loc[layer * D + neuron, 'kurt']:.4g}" in page
    assert page.count("background:#ffd54f") >= 10
    assert "no intervention results for 1.7" in page and "entropy_intervention.py" in page
    status, _, body = app.handle("/neuron/0/0")
    assert status == 200 and b"fixed_activation" in body and b"class=\"dataframe intervention\"" in body


def test_panels_are_png(app):
    from universal_neurons.viewer import PANELS

    for p in PANELS:
        status, ctype, body = app.handle(f"/plot/{p}/0/3.png")
        assert status == 200 and ctype == "image/png" and body[:8] == b"\x89PNG\r\n\x1a\n", p
    status, _, body = app.handle(f"/plot/activation_distribution/1/2.png?model={OTHER}")
    assert status == 200 and body[:4] == b"\x89PNG"


def test_cache_makes_a_value_once_while_it_is_asked_for_twice():
    """Two requests for one panel while it is drawn: drawn once, both get it; a failure is not cached."""
    import threading
    import time

    from universal_neurons.viewer import _LRU

    cache, calls, out = _LRU(4), [], []

    def slow():
        calls.append(1)
        time.sleep(0.3)
        return b"png"

    threads = [threading.Thread(target=lambda: out.append(cache.get("k", slow))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [b"png"] * 3 and len(calls) == 1

    def broken():
        raise OSError("unreadable")

    with pytest.raises(OSError):
        cache.get("bad", broken)
    assert "bad" not in cache and cache.get("bad", lambda: b"ok") == b"ok"
    for k in range(5):  # least recently used out first; "k" was used last but one
        cache.get(("x", k), lambda: b"")
    assert "k" not in cache and ("x", 4) in cache


def test_a_neuron_page_draws_its_panels_before_they_are_asked_for(app):
    """Opening /neuron/0/5 queues its panels: they reach the cache without a request, hold the bytes a
    fresh app draws, and a second page's panels wait in a bounded queue."""
    import time

    from universal_neurons.viewer import PANELS, ViewerApp

    assert app.handle("/neuron/0/5")[0] == 200
    deadline = time.time() + 120
    while time.time() < deadline and not all((MODEL, p, 0, 5) in app.pngs for p in PANELS):
        time.sleep(0.1)
    assert all((MODEL, p, 0, 5) in app.pngs for p in PANELS)
    fresh = ViewerApp(MODEL)
    for p in PANELS[:3]:
        assert app.pngs.get((MODEL, p, 0, 5), lambda: None) == fresh.handle(f"/plot/{p}/0/5.png")[2], p
    fresh._queued = __import__("threading").Semaphore(0)  # a full queue: the page serves, nothing is queued
    assert fresh.handle("/neuron/1/6")[0] == 200
    time.sleep(0.5)
    assert not any((MODEL, p, 1, 6) in fresh.pngs for p in PANELS)
    fresh.close()


BAD = ["/neuron/2/0", "/neuron/0/128", "/neuron/-1/0", "/neuron/0/1.5", "/plot/nope/0/0.png", "/plot/activation_distribution/0/999.png",
       "/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/neuron/0/3/../../../etc/passwd", "/neuron/..%2f..%2fetc/passwd",
       "/plot/..%2f..%2f..%2fetc%2fpasswd/0/0.png", "/neuron/0/3?model=../../etc", "/neuron/0/3?model=%2e%2e%2fetc",
       "/api/neurons?model=/etc/passwd", "/summary_data/toy-gpt2-tiny-a/weights/neuron_stats.csv", "//etc/passwd",
       "/neuron/0/3%00", "/neuron/99999999999/0"]


@pytest.mark.parametrize("path", BAD)
def test_not_found(app, path):
    status, _, body = app.handle(path)
    assert status == 404 and b"root:" not in body


def _serve(app_model):
    from universal_neurons.viewer import make_server

    server, _ = make_server(app_model)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_real_server_refuses_traversal_and_foreign_hosts(app):
    server = _serve(MODEL)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        for path, want in [("/", 200), ("/neuron/0/3", 200), *[(p, 404) for p in BAD[6:12]]]:
            c = http.client.HTTPConnection(host, port, timeout=30)
            c.request("GET", path)  # sent verbatim: http.client does not normalise '..'
            r = c.getresponse()
            assert r.status == want and b"root:" not in r.read(), path
        c = http.client.HTTPConnection(host, port, timeout=30)
        c.request("GET", "/", headers={"Host": "attacker.example:80"})
        assert c.getresponse().status == 403  # DNS rebinding
    finally:
        server.shutdown()
        server.server_close()


def test_missing_artifacts_name_the_command(tmp_path):
    from universal_neurons.viewer import ViewerApp

    app = ViewerApp(MODEL)
    status, _, body = app.handle("/api/neurons")
    assert status == 200 and "universal-neurons neuron-df --model toy-gpt2-tiny-a" in json.loads(body)["note"]
    status, _, body = app.handle("/neuron/0/0")
    assert status == 404 and b"summary.py --model toy-gpt2-tiny-a" in body and b"weights.py" in body
    # only a neuron dataframe: the page shows notes naming the missing stages, panels are note images
    df = pd.DataFrame({"layer": [0, 0, 1, 1], "neuron": [0, 1, 0, 1], "excess_corr": [0.1, np.nan, 0.7, 0.2]})
    paths.neuron_df_path(MODEL).parent.mkdir(parents=True)
    df.to_csv(paths.neuron_df_path(MODEL), index=False)
    app = ViewerApp(MODEL)
    assert json.loads(app.handle("/api/neurons")[2])["rows"][1] == [0, 1, None]
    status, _, body = app.handle("/neuron/1/1")
    page = body.decode()
    assert status == 200
    for cmd in ("python summary.py --model toy-gpt2-tiny-a", "python weights.py --model toy-gpt2-tiny-a",
                "correlations_fast.py --model_1_name toy-gpt2-tiny-a", "explain.py --model toy-gpt2-tiny-a",
                "entropy_intervention.py --model toy-gpt2-tiny-a"):
        assert cmd in page, cmd
    assert app.handle("/neuron/1/2")[0] == 404
    status, ctype, png = app.handle("/plot/top_neurons/1/1.png")
    assert status == 200 and png[:4] == b"\x89PNG"


def test_cli_parses_defaults(monkeypatch):
    """summary_viewer.py and `universal-neurons view` share ViewConfig's flags and serve through it."""
    import summary_viewer

    from universal_neurons import artifacts, viewer

    served = []
    monkeypatch.setattr(viewer, "serve", lambda *a: served.append(a))
    summary_viewer.main(["--model", MODEL])
    from universal_neurons.cli import main as cli_main
    cli_main(["view", "--model", MODEL, "--port", "0"])
    assert served == [(MODEL, "127.0.0.1", 8000, "cpu"), (MODEL, "127.0.0.1", 0, "cpu")]
    assert artifacts.stage_config("view", ["--model", MODEL]) == viewer.ViewConfig(model=MODEL)
    assert callable(summary_viewer.display_summary)  # the notebook re-exports stay


def test_hostile_names_links_and_loopback(tmp_path, monkeypatch):
    """Model names are URL-encoded in links and cannot end the page's script; a symlink out of the
    artifact folders is refused (its section shows a note); every loopback address checks Host."""
    import os

    from universal_neurons import paths, viewer

    name = "a'b\"<c>&d </script>"
    q = viewer._q(name)
    assert q == "?model=a%27b%22%3Cc%3E%26d%20%3C%2Fscript%3E"
    assert "</script" not in viewer._script_json(q + "</script><!--") and "<!--" not in viewer._script_json("<!--")
    assert viewer.is_loopback("127.0.0.2") and viewer.is_loopback("::1") and viewer.is_loopback("localhost")
    assert not viewer.is_loopback("0.0.0.0") and not viewer.is_loopback("10.0.0.1") and not viewer.is_loopback("evil.com")

    secret = tmp_path / "outside" / "secret.csv"
    secret.parent.mkdir()
    secret.write_text("layer,neuron,excess_corr\n0,0,0.9\n")
    monkeypatch.setenv("DATAFRAME_DIR", str(tmp_path / "dataframes"))
    paths.neuron_df_path("m").parent.mkdir(parents=True)
    os.symlink(secret, paths.neuron_df_path("m"))
    art = viewer.ModelArtifacts("m")
    assert art.neuron_df() is None
    body = json.loads(art.neuron_df_json())
    assert body["rows"] == [] and "outside the artifact folders" in body["note"]
    inside = tmp_path / "dataframes" / "real.csv"
    inside.write_text("layer,neuron,excess_corr\n0,0,0.9\n")
    os.unlink(paths.neuron_df_path("m"))
    os.symlink(inside, paths.neuron_df_path("m"))                # a link within the artifact folders is fine
    assert len(viewer.ModelArtifacts("m").neuron_df()) == 1


def test_server_backlog_threads_and_idle_timeout():
    import socket
    import threading
    import time

    from universal_neurons import viewer

    server, _ = viewer.make_server("m", "127.0.0.2", 0)
    assert server.request_queue_size >= 128 and server.MAX_THREADS >= 4
    host, port = server.server_address[:2]
    old = viewer.IDLE_TIMEOUT_S
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        idle = [socket.create_connection((host, port)) for _ in range(3)]  # send nothing
        time.sleep(0.2)
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(b"GET / HTTP/1.0\r\nHost: evil.example\r\n\r\n")     # 127.0.0.2 is loopback: Host checked
        assert b"403" in s.recv(200)
        for c in idle:
            c.close()
    finally:
        server.shutdown()
        server.server_close()
    assert old == viewer.IDLE_TIMEOUT_S and viewer._handler(None, True).timeout == viewer.IDLE_TIMEOUT_S


def test_panels_drawn_in_render_processes_equal_in_process(tiny_zoo, tmp_path, monkeypatch):
    """make_server(render_workers=2) draws panels in other processes, side by side: the same PNG bytes
    as drawn in the server itself, and a panel whose artifact is damaged is a note, not a 500."""
    import threading
    import urllib.request

    from universal_neurons import paths
    from universal_neurons.viewer import PANELS, ViewerApp, make_server

    root = write_zoo_artifacts(tmp_path / "artifacts")
    for var, sub in ENV.items():
        monkeypatch.setenv(var, str(root / sub))
    here = ViewerApp(MODEL)
    server, app = make_server(MODEL, "127.0.0.1", 0, render_workers=2)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for p in PANELS[:3]:
            with urllib.request.urlopen(f"{base}/plot/{p}/1/7.png", timeout=120) as r:
                assert r.status == 200 and r.read() == here.handle(f"/plot/{p}/1/7.png")[2], p
        weights = paths.weights_summary_path(MODEL) / "vocab_comps.pt"
        weights.write_bytes(b"damaged")
        fresh = ViewerApp(MODEL)
        status, ctype, png = fresh.handle("/plot/top_vocab_tokens/1/8.png")
        assert status == 200 and png[:4] == b"\x89PNG"
        status, _, page = fresh.handle("/neuron/1/8")
        assert status == 200 and b"could not be read" in page
    finally:
        server.shutdown()
        server.server_close()
        app.close()


def test_a_killed_render_worker_is_replaced(tiny_zoo, tmp_path, monkeypatch):
    """A render process killed (the OOM killer) costs one retry, not every later panel."""
    import os
    import signal

    from universal_neurons.viewer import ViewerApp

    root = write_zoo_artifacts(tmp_path / "artifacts")
    for var, sub in ENV.items():
        monkeypatch.setenv(var, str(root / sub))
    app = ViewerApp(MODEL, render_workers=1)
    try:
        assert app.handle("/plot/activation_distribution/1/7.png")[0] == 200
        for pid in list(app._pool._processes):
            os.kill(pid, signal.SIGKILL)
        status, _, png = app.handle("/plot/activation_distribution/1/8.png")
        assert status == 200 and png[:4] == b"\x89PNG"
        assert app.handle("/plot/activation_distribution/1/9.png")[0] == 200   # the new pool draws
    finally:
        app.close()


def test_typed_text_is_coloured_by_the_neurons_activation(app):
    """/api/activate runs the typed text through the model: the tokens are the tokenizer's (BOS first),
    the values the neuron's GELU output computed independently through Hugging Face's GPT-2 modules;
    long text is cut to MAX_TEXT_TOKENS; the neuron page carries the text box."""
    from urllib.parse import quote

    from transformers import GPT2LMHeadModel

    from universal_neurons import zoo
    from universal_neurons.models import load_tokenizer
    from universal_neurons.viewer import MAX_TEXT_TOKENS

    text = "def f(x):\n    return x + 1  # <b>&"
    tok = load_tokenizer(MODEL)
    ids = [tok.bos_token_id] + tok.encode(text, add_special_tokens=False)
    hf = GPT2LMHeadModel.from_pretrained(str(zoo.model_dir(MODEL))).eval()
    got = []
    hf.transformer.h[1].mlp.act.register_forward_hook(lambda m, i, o: got.append(o[0]))
    with torch.no_grad():
        hf(torch.tensor([ids]))
    n = int(got[0].amax(0).sub(got[0].amin(0)).argmax())  # the layer-1 neuron that varies most on the text
    status, ctype, body = app.handle(f"/api/activate/1/{n}?text={quote(text)}")
    assert status == 200 and ctype == "application/json"
    d = json.loads(body)
    assert d["ids"] == ids and "".join(d["tokens"][1:]) == text and not d["truncated"]
    np.testing.assert_allclose(d["values"], got[0][:, n].numpy(), atol=1e-4)
    assert np.ptp(d["values"]) > 1e-3                                           # not a constant

    status, _, body = app.handle(f"/api/activate/0/3?text={quote('x = 1 ' * 400)}")
    long = json.loads(body)
    assert status == 200 and long["truncated"] and len(long["ids"]) == min(MAX_TEXT_TOKENS, 32)  # the tiny zoo's n_ctx
    assert app.handle("/api/activate/0/3?text=")[0] == 400
    assert app.handle("/api/activate/2/0?text=x")[0] == 404                     # out of range
    page = app.handle("/neuron/1/7")[2].decode()
    assert "id='typein'" in page and "/api/activate/1/7?model=" in page and "textContent" in page


def test_example_contexts_are_coloured_token_by_token(app):
    """/api/examples: each max-activating example's whole window with the neuron's activation at every
    token, equal to Hugging Face's GPT-2 MLP run on the example's dataset row (the fake artifacts'
    summaries pick the examples; their values are not the model's)."""
    from transformers import GPT2LMHeadModel

    from universal_neurons import viewer_data as vd
    from universal_neurons import zoo

    status, ctype, body = app.handle("/api/examples/1/7")
    assert status == 200 and ctype == "application/json"
    got = json.loads(body)
    art = app.artifacts(MODEL)
    hf = GPT2LMHeadModel.from_pretrained(str(zoo.model_dir(MODEL))).eval()
    acts = []
    hf.transformer.h[1].mlp.act.register_forward_hook(lambda m, i, o: acts.append(o[0, :, 7]))
    assert [d["dataset"] for d in got] == list(art.full_names().values())
    for d, (short, full) in zip(got, art.full_names().items()):
        rows = art.token_rows(full)
        exs = vd.max_activating_examples(art.summaries()[short], rows, 1, 7, 10)
        assert len(d["examples"]) == len(exs) > 0
        for mine, e in zip(d["examples"], exs):
            start = e["pos"] - len(e["before"])
            with torch.no_grad():
                hf(rows[e["seq"]][None])
            want = acts[-1][start:e["pos"] + 1 + len(e["after"])]
            np.testing.assert_allclose(mine["values"], want.numpy(), atol=1e-4)
            assert len(mine["tokens"]) == len(want) and mine["pos"] == len(e["before"])
    page = app.handle("/neuron/1/7")[2].decode()
    assert "id='examples_run'" in page and "/api/examples/1/7?model=" in page
