"""`medbench report` figures and the self-contained HTML page, rendered in headless
Chromium when it is installed."""

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
import yaml
from click.testing import CliRunner

from medbench.cli import cli

from conftest import tiny_suite

FORMATS = "md,csv,latex,html"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A tiny phantom suite with a GAN arm (one epoch), an oversampling arm and `none`,
    a made-up fidelity.csv and ablation, then `medbench report`."""
    tmp = tmp_path_factory.mktemp("html")
    suite = tiny_suite(arms=[
        {"name": "none"},
        {"name": "oversample", "generator": "oversample"},
        {"name": "lsgan", "generator": "lsgan", "params": {"epochs": 1, "collapse_check": False}},
    ])
    path = tmp / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    res, rep = tmp / "res", tmp / "rep"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDBENCH_CACHE", str(tmp / "cache"))
        r = CliRunner().invoke(cli, ["run", str(path), "--out", str(res), "--quiet"])
        assert r.exit_code == 0, r.output
        # what the `fidelity` command leaves; text that needs escaping in the extractor
        rows = ["arm,generator,class,seed,fold,n_real,n_synthetic,fid,kid_mean,kid_std,isc_mean,"
                "precision,recall,fid_real_vs_real,kid_real_vs_real,extractor"]
        for fold, fid in ((0, 10.0), (1, 20.0)):
            rows.append(f"lsgan,lsgan,covid,0,{fold},8,32,{fid},0.5,0.1,1.5,0.25,0.75,2.0,0.01,"
                        "incept<v3>&co")
        (res / "fidelity.csv").write_text("\n".join(rows) + "\n")
        # an ablation folder as `medbench ablate` leaves it: levels are results folders
        for level in ("siir=0.5", "siir=0"):
            shutil.copytree(res, tmp / level, ignore=shutil.ignore_patterns("generators", "ablate-*"))
            shutil.move(tmp / level, res / "ablate-siir" / level)
        t0 = time.perf_counter()
        r = CliRunner().invoke(cli, ["report", str(res), "--out", str(rep), "--format", FORMATS])
        seconds = time.perf_counter() - t0
        assert r.exit_code == 0, r.output
    return res, rep, seconds


def test_report_writes_figures_and_a_self_contained_page(reported):
    res, rep, seconds = reported
    print(f"report with figures and html: {seconds:.1f} s")
    figs = rep / "figures"
    names = {p.name for p in figs.iterdir()}
    stems = ["confusion-smallcnn", "roc-pr-smallcnn", "gan-gallery"] + \
        [f"gan-lsgan-{c}" for c in ("pneumonia", "covid")]
    for stem in stems:
        for ext in ("png", "pdf"):
            assert f"{stem}.{ext}" in names, sorted(names)
            assert (figs / f"{stem}.{ext}").stat().st_size > 2000
    assert not any(n.startswith("gan-oversample") for n in names)   # nothing to show
    # the GAN artifacts hold a grid of real training images beside the samples
    folders = sorted((res / "generators" / "lsgan").iterdir())
    assert folders and all((f / "real.png").is_file() for f in folders)
    for ext in ("png", "pdf", "md", "csv", "tex"):
        assert (rep / "ablate-siir" / f"ablation.{ext}").is_file()
    md = (rep / "summary.md").read_text()
    assert "](figures/confusion-smallcnn.png)" in md and "](ablate-siir/ablation.png)" in md

    page = (rep / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"https?://", page)
    srcs = re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", page)
    assert len(srcs) == len(re.findall(r"<img\b", page)) == len(stems) + 1   # + ablation
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"<(link|script|iframe|object|embed)\b", page)
    head = md.splitlines()[2]
    assert "Made by: <code>" in page and "medbench report" in head
    # the summary table with its arms, the significance tables, per-class recall
    for text in ("<td class=\"l\">lsgan</td>", "McNemar", "Per-class recall", "±"):
        assert text in page, text
    # fidelity: mean over the two folds, the extractor escaped
    assert "Fidelity" in page and "<td>15</td>" in page and "incept&lt;v3&gt;&amp;co" in page
    assert "incept<v3>" not in page
    # and the same table in summary.md
    assert "Image quality of the synthetic images" in md and "| lsgan | lsgan | covid | 2 |" in md

    first = _files(rep)
    r = CliRunner().invoke(cli, ["report", str(res), "--out", str(rep), "--format", FORMATS])
    assert r.exit_code == 0, r.output
    assert first == _files(rep)


# ------------------------------------------------------------------ Chromium
PROBE = """<script>
(function () {
  var errors = [];
  window.addEventListener('error', function (e) {
    var t = e.target;
    errors.push(t && t !== window && t.tagName ? 'failed to load ' + t.tagName : 'error: ' + e.message);
  }, true);
  document.addEventListener('securitypolicyviolation', function (e) {
    errors.push('blocked by CSP: ' + e.blockedURI);
  });
  var ce = console.error;
  console.error = function () {
    errors.push('console.error: ' + Array.prototype.join.call(arguments, ' '));
    return ce.apply(console, arguments);
  };
  function report() {
    var imgs = Array.prototype.slice.call(document.images);
    var pre = document.createElement('pre');
    pre.id = 'probe';
    pre.textContent = JSON.stringify({
      images: imgs.length,
      loaded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
      resources: performance.getEntriesByType('resource').length,
      tables: document.querySelectorAll('table').length,
      height: document.body.scrollHeight,
      errors: errors});
    document.body.appendChild(pre);
  }
  // a moment after load, so late errors (CSP reports are queued) are counted too
  window.addEventListener('load', function () { setTimeout(report, 200); });
})();
</script>"""


def _chromium(args, tmp, timeout=60):
    """Run headless Chromium in its own process group; on timeout kill the whole group
    (browser, zygote, renderer) so nothing outlives the test."""
    cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-extensions", "--disable-background-networking", "--disable-sync",
           "--disable-dev-shm-usage",
           "--no-default-browser-check", "--mute-audio", "--hide-scrollbars",
           f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "HOME": str(tmp)})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish in {timeout} s: {' '.join(cmd)}")
    return proc.returncode, out, err


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get "
                    "install chromium); the HTML report is not rendered")
def test_report_html_renders_in_chromium(reported, tmp_path):
    _, rep, _ = reported
    page = (rep / "report.html").read_text(encoding="utf-8")
    # a copy with the probe first in <head>, before the page's Content-Security-Policy
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
    t0 = time.perf_counter()
    rc, dom, err = _chromium(["--virtual-time-budget=5000", "--dump-dom", probed.as_uri()], tmp_path)
    assert rc == 0, err[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, f"the probe did not run; DOM starts {dom[:300]!r}; stderr {err[-1000:]}"
    import html
    probe = json.loads(html.unescape(found.group(1)))
    n_img = len(re.findall(r"<img\b", page))
    assert probe["images"] == probe["loaded"] == n_img >= 5, probe
    assert probe["errors"] == [] and probe["resources"] == 0, probe
    assert probe["tables"] >= 4 and probe["height"] > 2000, probe
    # Chromium's own log of the page's console (any level): the page has no script, so
    # anything there (a CSP violation, a failed load) is a fault
    console = [line for line in err.splitlines() if ":CONSOLE" in line]
    assert console == [], console

    shot = tmp_path / "shot.png"
    rc, _, err = _chromium([f"--screenshot={shot}", "--window-size=1100,1600",
                            "--virtual-time-budget=5000", (rep / "report.html").as_uri()], tmp_path)
    assert rc == 0 and shot.is_file(), err[-2000:]
    from PIL import Image
    with Image.open(shot) as im:
        gray = im.convert("L")
        assert gray.size == (1100, 1600)
        lo, hi = gray.getextrema()
        assert hi - lo > 100          # text and tables on a white page, not a blank image
    print(f"chromium: {time.perf_counter() - t0:.1f} s")


def test_real_grid_of_a_model_of_all_classes_has_one_class_per_row():
    import torch
    from medbench.generators import _real_grid
    labels = torch.tensor([0] * 20 + [1] * 5 + [2] * 30)
    images = labels.view(-1, 1, 1, 1).to(torch.uint8).expand(-1, 1, 4, 4) + 1  # pixel = class + 1
    grid = _real_grid(images, labels, by_class=True)
    assert grid.shape == (64, 1, 4, 4)
    rows = grid[:, 0, 0, 0].view(8, 8)
    assert rows[0].tolist() == [1] * 8 and rows[1].tolist() == [2] * 5 + [0] * 3   # padded
    assert rows[2].tolist() == [3] * 8 and rows[3].tolist() == [1] * 8
    assert rows[4].tolist() == [0] * 8                  # class 1 has no images left
    assert len(_real_grid(images[:10], labels[:10], by_class=False)) == 10
