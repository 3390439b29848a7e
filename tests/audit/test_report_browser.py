"""The report opened in a real headless Chromium: a screenshot shows the contents box and a forest plot (zero
effects visible as points with their CI). Chromium is installed with apt in the set-up where the machine allows it
(root, apt-get, a reachable mirror); otherwise the test is skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _find() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    found = _find()
    if found is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get") \
            and os.environ.get("LATENTCHECK_NO_APT") != "1":
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], env=env,
                           capture_output=True, timeout=1200)
        except (OSError, subprocess.TimeoutExpired):
            pass
        found = _find()
    if found is None:
        pytest.skip("no Chromium here and it cannot be installed (needs root, apt-get and a reachable mirror)")
    return found


def screenshot(browser: str, page: Path, out: Path, size=(1280, 3200)) -> np.ndarray:
    from PIL import Image

    cmd = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--window-size={size[0]},{size[1]}", f"--screenshot={out}", page.resolve().as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                       env={**os.environ, "HOME": str(out.parent)})
    assert out.is_file(), r.stderr[-2000:]
    return np.asarray(Image.open(out).convert("RGB")).astype(int)


def near(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> np.ndarray:
    return (np.abs(img - np.array(rgb)).max(axis=2) <= tol)


def test_analysis_report_in_chromium_shows_contents_and_a_forest_plot(chromium, tmp_path):
    import latentcheck
    from latentcheck.audit.report import render_report
    from latentcheck.toy.world import make_samples

    tasks = [{"id": s.id, "image": s.image, "question": s.question, "options": s.options, "answer": s.answer}
             for s in make_samples(4, "test", seed=5)]
    run = tmp_path / "run"
    latentcheck.perturb_latent("toy-latent", tasks, ["identity", "zero"], mediation="none", n_boot=100,
                               plots=True, out=run)
    forest_png = run / "plots" / "delta_logp.png"
    assert forest_png.is_file() and forest_png.with_suffix(".svg").is_file()
    page = render_report(run)
    html = page.read_text()
    assert '<nav id="contents">' in html and 'href="#figures"' in html and 'id="summary"' in html
    assert 'data-figure="perturb-latent/delta_logp"' in html and 'SVG</a>' in html
    img = screenshot(chromium, page, tmp_path / "shot.png")
    assert img.shape[1] == 1280 and len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # a rendered page, not blank
    nav = near(img, (0xfa, 0xfa, 0xfa), 1)  # the contents box background
    rows = np.nonzero(nav.sum(axis=1) > 300)[0]
    assert len(rows) > 40 and rows.min() < img.shape[0] // 3, "contents box not drawn near the top"
    # the forest plot's estimate markers (dark blue points): the identity effect is exactly 0 and still drawn
    markers = near(img, (0x1f, 0x3b, 0x63), 25)
    assert markers.sum() > 30, "no forest-plot markers in the screenshot"


def page_metrics(browser: str, page: Path, open_all: bool = False) -> dict:
    """Measured in the browser after load: the page height (px), the embedded images and how many are laid out
    (checkVisibility: not inside a closed <details>). ``open_all`` opens every <details> first (the uncompact page)."""
    import json
    import re

    probe = page.with_name(page.stem + ".probe.html")
    script = ("<script>window.addEventListener('load',()=>{"
              + ("document.querySelectorAll('details').forEach(d=>d.open=true);" if open_all else "")
              + "const im=[...document.images];document.title=JSON.stringify({height:"
                "document.documentElement.scrollHeight,images:im.length,"
                "shown:im.filter(i=>i.checkVisibility()).length});});</script>")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", script + "</body>"), encoding="utf-8")
    r = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                        "--virtual-time-budget=5000", "--dump-dom", probe.resolve().as_uri()], capture_output=True,
                       text=True, timeout=180, env={**os.environ, "HOME": str(page.parent)})
    probe.unlink()
    found = re.search(r"<title>(\{.*?\})</title>", r.stdout.replace("&quot;", '"'))
    assert found, r.stderr[-2000:]
    return json.loads(found.group(1))


def test_audit_report_is_compact_by_design(chromium, tmp_path, tiny_checkpoint):
    """Two models side by side: the comparison table, each model's verdict table and ONE key figure are laid out;
    every other figure waits in a collapsed <details> (opened, the same page is far taller)."""
    from typer.testing import CliRunner

    from latentcheck.cli.app import app

    out = tmp_path / "audit"
    res = CliRunner().invoke(app, ["audit", "-m", f"a={tiny_checkpoint('toy', 'toy-latent')}", "-m",
                                   f"b={tiny_checkpoint('toy', 'toy-bypass')}", "--limit", "4", "--force-latent",
                                   "-o", str(out), "--stage", "perturb_input,perturb_latent", "--n-boot", "50", "-q"])
    assert res.exit_code == 0, res.output
    page = out / "report.html"
    html = page.read_text()
    assert html.count("<details") >= 2 * 4 and "Comparison</h2>" in html and html.count('class="key"') == 2
    compact, full = page_metrics(chromium, page), page_metrics(chromium, page, open_all=True)
    assert compact["images"] == full["images"] > 10
    n_comparison = html.count('data-figure="zoo/')
    assert compact["shown"] == n_comparison + 2  # the comparison figures + one key figure per model
    assert full["shown"] == full["images"]
    assert compact["height"] < full["height"] / 2, (compact, full)
