"""report.html in a real browser: headless Chromium (Debian's `chromium` package; docs/notes.md) loads the page
from disk, with the network off, and we check that the embedded images decode, the tables are filled and
the pairs sit side by side. Skips, saying why, where Chromium is not installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html import unescape

import numpy as np
import pytest

from jobs import report as report_job
from tests.test_report import make_output

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not found: install Debian's `chromium` package (apt-get install -y chromium); "
    "playwright's own browser download does not work here (docs/notes.md)",
)
# Measured in the page after `load`: what an image that failed to decode (naturalWidth 0) or an empty
# table would give away. The report itself has no script; this probe is added to a copy of it.
PROBE = """<script>
window.addEventListener('load', () => {
  const out = {images: {}, rows: {}, sideBySide: null};
  for (const img of document.images)
    out.images[img.id] = {complete: img.complete, natural: [img.naturalWidth, img.naturalHeight],
                          shown: img.clientWidth};
  document.querySelectorAll('table[id]').forEach(t => out.rows[t.id] = t.tBodies[0].rows.length);
  const cells = document.querySelectorAll('#pairs-closest tbody tr:first-child td.text');
  if (cells.length === 2) {
    const [kept, removed] = [...cells].map(c => c.getBoundingClientRect());
    out.sideBySide = kept.top === removed.top && kept.right <= removed.left;
  }
  document.body.setAttribute('data-probe', JSON.stringify(out));
});
</script>"""


def chromium(*args: str, profile) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120, check=True,
    )


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = make_output(tmp_path_factory.mktemp("out") / "out")
    report_job.report(str(root))
    return root / "report" / "report.html"


def test_images_load_and_tables_are_filled_in_chromium(page, tmp_path):
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = chromium("--dump-dom", probed.as_uri(), profile=tmp_path / "profile").stdout
    match = re.search(r'data-probe="([^"]*)"', dom)
    assert match, f"the probe did not run; DOM starts {dom[:300]!r}"
    result = json.loads(unescape(match.group(1)))
    images = result["images"]
    assert sorted(images) == ["similarity", "token-lengths"]
    assert images["token-lengths"]["natural"] == [1500, 420] and images["similarity"]["natural"] == [900, 420]
    assert all(image["complete"] and image["shown"] > 100 for image in images.values())
    assert result["rows"] == {"stages": 6, "reasons": 4, "sources": 2, "tokens": 6, "dedup": 9,
                              "pairs-closest": 20, "pairs-furthest": 20, "timings": 4}
    assert result["sideBySide"] is True


def test_screenshot_is_a_rendered_page(page, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    chromium("--hide-scrollbars", "--window-size=1400,2400", f"--screenshot={shot}", page.as_uri(),
             profile=tmp_path / "profile")
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (2400, 1400, 3)
    packed = (pixels[..., 0].astype(np.int32) << 16) | (pixels[..., 1].astype(np.int32) << 8) | pixels[..., 2]
    colors = np.unique(packed)
    # text, table borders and two plots: hundreds of colours; a blank or broken page has a handful
    assert len(colors) > 200
    # the plots' fill blue (#1f5fa8 at alpha 0.8 on white, and the step lines) is on screen
    blue = (pixels[..., 2] > 150) & (pixels[..., 0] < 120)
    assert blue.sum() > 2000
