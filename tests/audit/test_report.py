"""Tests for audit/report.py: a report rendered from a saved audit folder embeds every figure as a PNG data URI, is
well-formed HTML, needs no model, and renders its images in a headless browser (when chromium is installed)."""

from __future__ import annotations

import base64
import copy
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import torch

from latentcheck.audit.audit import AuditSettings, run_audit
from latentcheck.audit.verdicts import AUDIT_FILE, STAGE_FOLDERS, comparison_row, load_audit, write_audit
from latentcheck.audit.report import PNG_SIGNATURE, REPORT_FILE, render_report, report_figures
from latentcheck.core.runner import CommonOptions

torch.set_num_threads(1)

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
# the figures the audit promises (docs/audit.md): per-index similarity heat maps, collapse curves, intervention
# effects with CIs, probe accuracy per index, sensitivity ratios, mediation
REQUIRED = ["audit/xz_sensitivity", "perturb-input/inter_instance_raw", "perturb-input/inter_instance_centred",
            "perturb-input/collapse_adjacent", "perturb-input/collapse_all_pairs", "perturb-input/sensitivity",
            "audit/zy_effects", "perturb-latent/accuracy", "perturb-latent/mediation_image",
            "audit/encodes_per_site", "probe/probe_meta.answer_text", "probe/behavioural"]


class _Checker(HTMLParser):
    """Collects <img> attributes and checks that every non-void element is closed in order."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.images: list[dict] = []
        self.doctype = False

    def handle_decl(self, decl):
        self.doctype = self.doctype or decl.lower() == "doctype html"

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in VOID:
            self.errors.append(f"end tag for void element <{tag}>")
        elif not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


def check_html(text: str) -> _Checker:
    c = _Checker()
    c.feed(text)
    c.close()
    assert c.doctype, "missing <!DOCTYPE html>"
    assert not c.errors, c.errors[:5]
    assert not c.stack, f"unclosed elements {c.stack}"
    return c


def decoded_images(checker: _Checker) -> dict[str, bytes]:
    """{data-figure id: PNG bytes}; every <img> must carry a PNG data URI that PIL can open."""
    from PIL import Image

    out = {}
    for img in checker.images:
        src = img.get("src", "")
        assert src.startswith("data:image/png;base64,"), src[:40]
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data.startswith(PNG_SIGNATURE)
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        assert img.get("data-figure") and img.get("alt")
        out[img["data-figure"]] = data
    return out


@pytest.fixture(scope="module")
def audit_dir(tiny_checkpoint, tmp_path_factory):
    """A saved audit of a tiny random latent model (every latent stage; 8 samples so the probes can split)."""
    out = tmp_path_factory.mktemp("audit-report")
    ck = tiny_checkpoint("toy", "toy-mediated")
    run_audit(CommonOptions(model=str(ck), out=str(out), limit=8, quiet=True),
              AuditSettings(force_latent=True, report=False, n_boot=200))
    return out


def test_report_embeds_every_figure_as_png_and_is_well_formed(audit_dir):
    path = render_report(audit_dir)
    assert path == audit_dir / REPORT_FILE
    text = path.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text  # self-contained: nothing fetched
    images = decoded_images(check_html(text))
    missing = [f for f in REQUIRED if f not in images]
    assert not missing, f"missing figures {missing}; have {sorted(images)}"
    # every PNG the analyses wrote, and every audit figure, is embedded byte for byte
    pngs = sorted(p for stage in STAGE_FOLDERS.values() for p in (audit_dir / stage / "plots").glob("*.png"))
    pngs += sorted((audit_dir / "figures").glob("*.png"))
    assert len(pngs) >= len(REQUIRED)
    embedded = set(images.values())
    assert all(p.read_bytes() in embedded for p in pngs), [p.name for p in pngs if p.read_bytes() not in embedded]
    assert len(images) == len(pngs)
    # the verdicts and their numbers are in the page
    doc = load_audit(audit_dir)
    for v in doc["models"][0]["verdicts"].values():
        assert v["verdict"] in text
    assert "X -&gt; Z" in text and "equivalence_margin" in text


def test_report_is_rendered_from_saved_results_only(audit_dir, tmp_path, monkeypatch):
    import latentcheck.core.loader as loader

    def no_model(*a, **k):
        raise AssertionError("the report must not load a model")

    monkeypatch.setattr(loader, "load_model", no_model)
    copy_dir = tmp_path / "copy"
    shutil.copytree(audit_dir, copy_dir)
    doc = json.loads((copy_dir / AUDIT_FILE).read_text())
    doc["models"][0]["verdicts"]["zy"]["summary"] = "EDITED <numbers> & more"
    (copy_dir / AUDIT_FILE).write_text(json.dumps(doc))
    text = render_report(copy_dir).read_text()
    assert "EDITED &lt;numbers&gt; &amp; more" in text  # escaped, and read from audit.json
    check_html(text)


def test_zoo_report_has_the_comparison_figures(audit_dir, tmp_path):
    """A multi-model audit folder (two copies of the saved audit as two models) renders the side-by-side table,
    the comparison figures and every model's own figures."""
    root = tmp_path / "zoo"
    doc = load_audit(audit_dir)
    entries = []
    for name in ("model-a", "model-b"):
        shutil.copytree(audit_dir, root / name)
        e = copy.deepcopy(doc["models"][0])
        e.update(model=name, folder=name)
        entries.append(e)
    zoo = {**doc, "kind": "zoo", "models": entries, "comparison": [comparison_row(e) for e in entries]}
    write_audit(root, zoo)
    figs = report_figures(root)
    ids = ["zoo/xz", "zoo/zy", "zoo/encodes", "zoo/mechanism", "zoo/bench"]
    assert [f.id for f in figs["comparison"]] == ids
    text = render_report(root).read_text()
    checker = check_html(text)
    images = decoded_images(checker)
    for fid in ids:
        assert fid in images
    assert len(checker.images) == len(ids) + len(figs["model-a"]) + len(figs["model-b"])
    # the mechanism section: its tables once for the comparison and once per model, and the stage's figures
    assert '<h2 id="mechanism">Mechanism</h2>' in text and text.count("knockout answer-&gt;span dAcc") == 3
    assert any(f.id == "mechanism/mechanism_effects" for f in figs["model-a"])
    assert len(figs["model-a"]) >= len(REQUIRED)
    assert 'href="#model-model-b"' in text and 'id="model-model-b"' in text


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no headless browser (chromium) installed")
def test_headless_browser_renders_the_images(audit_dir, tmp_path):
    """The documented command (docs/audit.md) screenshots the report; a copy with a load-time script counts the
    images the browser actually decoded."""
    from PIL import Image

    report = render_report(audit_dir)
    shot = tmp_path / "shot.png"
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,2400",
           f"--screenshot={shot}", report.resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    with Image.open(shot) as im:
        colours = im.convert("RGB").resize((160, 300)).getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 50  # figures, not a blank page
    n_img = report.read_text().count("<img ")
    probe = tmp_path / "probe.html"
    script = ("<script>window.addEventListener('load',function(){var im=document.images,ok=0;"
              "for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++;}"
              "var p=document.createElement('p');p.id='lc-loaded';p.textContent=ok+'/'+im.length;"
              "document.body.appendChild(p);});</script>")
    probe.write_text(report.read_text().replace("</body>", script + "</body>"))
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          probe.resolve().as_uri()], check=True, capture_output=True, text=True, timeout=120).stdout
    assert f'id="lc-loaded">{n_img}/{n_img}<' in dom
