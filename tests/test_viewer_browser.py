"""The neuron viewer in a real browser: Debian's headless Chromium driven by selenium.

Serves the app on a free loopback port from tiny-zoo artifacts, filters the table to the universal
neurons, opens one, checks that every panel image loaded and the console has no SEVERE entry,
follows a correlation-partner link, and saves screenshots to ci_artifacts/viewer_table.png and
ci_artifacts/viewer_neuron.png. Skips only when chromium / chromedriver are not installed.
"""
import shutil
import threading
from pathlib import Path

import pytest

from test_viewer import ENV, MODEL, OTHER, UNIVERSAL, write_zoo_artifacts

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent.parent / "ci_artifacts"
pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(DRIVER).exists()),
                                reason="needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs the selenium package ([test] extras)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,1000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _screenshot(driver, name):
    """The whole page (the window grown to the document's height, at most 6000 px)."""
    h = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(h, 800), 6000))
    driver.save_screenshot(str(ARTIFACTS / name))
    driver.set_window_size(1400, 1000)


def _severe(driver):
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _serve_zoo(tmp_path, monkeypatch):
    """The viewer of fake tiny-zoo artifacts on a free loopback port: (server, base URL)."""
    from universal_neurons.viewer import make_server

    root = write_zoo_artifacts(tmp_path / "artifacts")
    for var, sub in ENV.items():
        monkeypatch.setenv(var, str(root / sub))
    server, _ = make_server(MODEL, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_browse_table_neuron_and_partner(tiny_zoo, tmp_path, monkeypatch, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from universal_neurons.viewer import PANELS

    server, base = _serve_zoo(tmp_path, monkeypatch)
    ARTIFACTS.mkdir(exist_ok=True)
    wait = WebDriverWait(browser, 60)
    try:
        # the table: loads the JSON, filters to the universal neurons client-side
        browser.get(base + "/")
        wait.until(lambda d: d.find_element(By.ID, "status").text == "ready")
        assert "256 of 256 neurons" in browser.find_element(By.ID, "count").text
        _screenshot(browser, "viewer_table.png")
        browser.find_element(By.ID, "universal").click()
        wait.until(lambda d: d.find_element(By.ID, "count").text.startswith(f"{len(UNIVERSAL)} of 256"))
        links = browser.find_elements(By.CSS_SELECTOR, "a.nlink")
        hrefs = sorted(a.get_attribute("href").split(base)[1] for a in links)
        assert hrefs == sorted(f"/neuron/{l}/{n}?model={MODEL}" for l, n in UNIVERSAL)
        browser.find_element(By.ID, "search").send_keys("1.")
        wait.until(lambda d: d.find_element(By.ID, "count").text.startswith("1 of 256"))
        assert not _severe(browser)

        # one neuron: every panel image decoded, examples and partners present
        browser.find_element(By.CSS_SELECTOR, "a.nlink").click()
        wait.until(lambda d: d.current_url.endswith(f"/neuron/1/7?model={MODEL}"))
        wait.until(lambda d: d.execute_script(
            "return [...document.images].every(i => i.complete)"))
        widths = browser.execute_script(
            "return [...document.querySelectorAll('img.panel')].map(i => [i.alt, i.naturalWidth])")
        assert sorted(a for a, _ in widths) == sorted(PANELS)
        assert all(w > 0 for _, w in widths), widths
        assert browser.find_elements(By.CSS_SELECTOR, "#dfrow") and browser.find_elements(By.CSS_SELECTOR, "a.comp-link")
        _screenshot(browser, "viewer_neuron.png")
        assert not _severe(browser), _severe(browser)

        # the correlation partner in the other seed
        partner = browser.find_element(By.CSS_SELECTOR, "a.corr-link")
        target = partner.get_attribute("href")
        partner.click()
        wait.until(lambda d: d.current_url == target)
        assert f"?model={OTHER}" in target and OTHER in browser.find_element(By.TAG_NAME, "h1").text
        wait.until(lambda d: d.execute_script("return [...document.images].every(i => i.complete)"))
        assert all(w > 0 for w in browser.execute_script(
            "return [...document.querySelectorAll('img.panel')].map(i => i.naturalWidth)"))
        assert not _severe(browser), _severe(browser)
    finally:
        server.shutdown()
        server.server_close()


def test_a_hostile_dataframe_runs_no_script(tiny_zoo, tmp_path, monkeypatch, browser):
    """Column names and cells crafted to run script (and a model name full of HTML and URL characters)
    are shown as text in the real page: no handler fires, the page's own script still works."""
    import pandas as pd
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from universal_neurons import paths
    from universal_neurons.viewer import make_server

    root = write_zoo_artifacts(tmp_path / "artifacts")
    for var, sub in ENV.items():
        monkeypatch.setenv(var, str(root / sub))
    evil = "<img src=x onerror=\"window.pwned=1\">"
    df = pd.read_csv(paths.neuron_df_path(MODEL))
    df = df.rename(columns={"max_corr": evil, "sparsity": "</script><script>window.pwned=2</script>"})
    df["note"] = [evil if i % 2 else "<svg onload=window.pwned=3>" for i in range(len(df))]
    df.to_csv(paths.neuron_df_path(MODEL), index=False)
    server, _ = make_server(MODEL, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        browser.get(base + "/")
        WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "status").text == "ready")
        assert browser.execute_script("return window.pwned") is None
        assert not browser.find_elements(By.CSS_SELECTOR, "#table img, #table svg, #table script")
        headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#table th")]
        assert any(evil in h for h in headers)                      # shown as the text it is
        options = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#fcol option")]
        assert evil in options
        browser.get(base + "/neuron/1/7?model=" + MODEL)
        assert browser.execute_script("return window.pwned") is None
    finally:
        server.shutdown()
        server.server_close()


def test_typed_text_in_the_browser(tiny_zoo, tmp_path, monkeypatch, browser):
    """Type a text on a neuron page, press run: one coloured span per token, each span's value the
    neuron's activation computed independently through Hugging Face's GPT-2 modules."""
    import torch
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from transformers import GPT2LMHeadModel

    from universal_neurons import zoo
    from universal_neurons.models import load_tokenizer

    server, base = _serve_zoo(tmp_path, monkeypatch)
    text = "for i in range(10):\n    print(i) <script>alert(1)</script>"
    try:
        browser.get(base + f"/neuron/1/7?model={MODEL}")
        browser.find_element(By.ID, "typein").send_keys(text)
        browser.find_element(By.ID, "typein_run").click()
        WebDriverWait(browser, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#typein_out span.tok"))
        spans = browser.execute_script(
            "return [...document.querySelectorAll('#typein_out span.tok')].map(s => [s.textContent, +s.dataset.value, s.title, s.style.background])")
        browser.find_element(By.ID, "examples_run").click()                       # the examples' whole contexts
        WebDriverWait(browser, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#examples_out div.ctx span.tok"))
        n_ctx = browser.execute_script("return document.querySelectorAll('#examples_out div.ctx').length")
        ARTIFACTS.mkdir(exist_ok=True)
        _screenshot(browser, "viewer_typed_text.png")
        assert not _severe(browser), _severe(browser)
        assert not browser.execute_script("return document.querySelectorAll('#typein_out script').length")
        assert n_ctx >= 10                                                          # 10 examples per dataset
    finally:
        server.shutdown()
        server.server_close()
    tok = load_tokenizer(MODEL)
    ids = ([tok.bos_token_id] + tok.encode(text, add_special_tokens=False))[:zoo.get_preset("tiny").ctx_len]
    assert [s[0] for s in spans] == [tok.decode([i]) for i in ids]
    hf = GPT2LMHeadModel.from_pretrained(str(zoo.model_dir(MODEL))).eval()
    got = []
    hf.transformer.h[1].mlp.act.register_forward_hook(lambda m, i, o: got.append(o[0, :, 7]))
    with torch.no_grad():
        hf(torch.tensor([ids]))
    for (_, value, title, background), want in zip(spans, got[0].tolist()):
        assert abs(value - want) < 1e-4 and title == f"{value:.4f}"
        assert ("255, 140, 0" if value >= 0 else "30, 110, 255") in background   # orange up, blue down


def test_committed_notebooks_show_their_figures(browser, tmp_path):
    """Each committed paper notebook as a code host shows it (nbconvert's HTML of the .ipynb, nothing
    executed): every figure among its outputs is a PNG the browser decoded; screenshot of one."""
    import nbformat
    from nbconvert import HTMLExporter

    from test_notebooks import NB_DIR, NOTEBOOKS, build

    ARTIFACTS.mkdir(exist_ok=True)
    for name in NOTEBOOKS:
        nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
        html, _ = HTMLExporter().from_notebook_node(nb)
        page = tmp_path / f"{name}.html"
        page.write_text(html)
        browser.get(page.as_uri())
        shown = browser.execute_script(
            "return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 100"
            " && i.src.startsWith('data:image/png')).length")
        assert shown == len(build.image_outputs(nb)) > 0, name
        if name == "properties_of_universal_neurons":
            _screenshot(browser, "notebook_properties.png")


def test_report_paper_comparison_section_in_a_browser(browser, tmp_path):
    """The report of a paper model built from constructed data (a GPT2-small neuron dataframe holding the
    paper's universal neurons at their published excess_corr, plus 60 universal neurons of its own), as
    HTML: the comparison section is there with its scatter decoded; screenshot of that section."""
    import mistune
    import numpy as np
    import pandas as pd
    from selenium.webdriver.common.by import By

    from universal_neurons import report
    from universal_neurons.neuron_df import NEURON_DF_COLUMNS, load_paper_dataframe

    pub = load_paper_dataframe("stanford-gpt2-small-a")
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"layer": np.repeat(np.arange(12), 3072), "neuron": np.tile(np.arange(3072), 12)})
    df = df.merge(pub[["layer", "neuron", "excess_corr"]], on=["layer", "neuron"], how="left")
    noise = rng.normal(0, 0.08, len(df))
    df["excess_corr"] = np.where(df["excess_corr"].isna(), rng.uniform(0, 0.4, len(df)), df["excess_corr"] + noise)
    df.loc[rng.choice(len(df), 60, replace=False), "excess_corr"] = 0.8
    for c in NEURON_DF_COLUMNS[2:]:
        if c not in df:
            df[c] = rng.uniform(0.1, 0.4, len(df))
    md = report.write_report("stanford-gpt2-small-a", df[NEURON_DF_COLUMNS], others=["stanford-gpt2-small-b"],
                             dataset="constructed", toy=False, out_dir=tmp_path).read_text()
    page = tmp_path / "report.html"
    page.write_text("<html><body style='font-family:sans-serif;max-width:1100px'>" + mistune.html(md) + "</body></html>")
    browser.get(page.as_uri())
    head = browser.find_element(By.XPATH, "//h2[contains(., \"Against the paper's published universal neurons\")]")
    assert browser.execute_script(
        "const i = Array.from(document.images).find(i => i.src.endsWith('paper_comparison.png'));"
        "return i && i.complete && i.naturalWidth > 100")
    browser.execute_script("arguments[0].scrollIntoView()", head)
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "report_paper_comparison.png"))
