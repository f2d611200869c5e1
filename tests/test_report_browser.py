"""The report pages in a real browser: headless Chromium driven over the DevTools protocol.

Each page must load without console errors or uncaught exceptions, every image must decode
(``naturalWidth > 0``), and the legend must list exactly the labels present. Subject pages
must show the label outlines (image | outline pairs, opening at full resolution on a click:
the enlarged view is screenshotted and its pixels checked for the labels' report colours
beside the grey image) and one "what these networks can and cannot do" box per model. A
full-page PNG screenshot of each page is kept under the pytest temporary folder, or under
``$LEGSEG_TEST_ARTIFACTS`` when that is set.

The DevTools protocol is spoken over ``--remote-debugging-pipe`` (file descriptors 3 and 4,
NUL-separated JSON), so no client library is needed. Skipped when no Chromium is installed
(Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from legseg_tf import group
from legseg_tf.reports.participant import write_participant_outputs
from tests.helpers import build_outputs

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_S = 60.0
VIEW_WIDTH = 1300

INSPECT = """(() => {
  const images = Array.from(document.images).map(i => ({complete: i.complete,
                                                         width: i.naturalWidth,
                                                         alt: i.alt}));
  const legends = Array.from(document.querySelectorAll('.legend')).map(
      l => Array.from(l.querySelectorAll('[data-label]')).map(e => Number(e.dataset.label)));
  const external = Array.from(document.querySelectorAll('[src],link[href]')).map(
      e => e.getAttribute('src') || e.getAttribute('href')).filter(u => !u.startsWith('data:'));
  const height = document.documentElement.scrollHeight;
  const box = document.getElementById('qc-flags');
  const qc = box === null ? null : {
    visible: box.offsetHeight > 0 && getComputedStyle(box).display !== 'none',
    top: box.getBoundingClientRect().top + window.scrollY,
    title: (box.querySelector('h2') || {}).textContent,
    flags: Array.from(box.querySelectorAll('li[data-code]')).map(li => ({
      code: li.dataset.code, css: li.className, text: li.textContent,
      color: getComputedStyle(li).color})),
    none: box.querySelectorAll('.qc-none').length};
  const headings = Object.fromEntries(Array.from(document.querySelectorAll('h2')).map(
      h => [h.textContent, h.getBoundingClientRect().top + window.scrollY]));
  const figures = Array.from(document.querySelectorAll('img[data-overlay]')).map(i => ({
    overlay: i.dataset.overlay, view: i.dataset.view, width: i.naturalWidth,
    shown: i.getBoundingClientRect().width, folded: i.closest('details:not([open])') !== null,
    link: (i.closest('a.zoom-open') || {href: null}).href}));
  const models = Array.from(document.querySelectorAll('.model-box')).map(b => ({
    id: b.dataset.model, text: b.textContent, visible: b.offsetHeight > 0,
    never: (b.querySelector('.never-labels') || {dataset: {}}).dataset.labels || null}));
  const verdicts = Array.from(document.querySelectorAll('p.verdict')).map(p => p.textContent);
  const summary = Array.from(document.querySelectorAll('table.summary th')).map(
      th => th.textContent);
  return JSON.stringify({images, legends, external, height, qc, headings, figures, models,
                         verdicts, summary});
})()"""

#: Opens the first axial outline figure by clicking it; what the enlarged view looks like.
ZOOM_OPEN = """(() => {
  const image = document.querySelector('a.zoom-open img[data-overlay="outline"][data-view="axial"]');
  if (image === null) return JSON.stringify(null);
  const link = image.closest('a.zoom-open');
  const box = document.getElementById(link.getAttribute('href').slice(1));
  const before = image.getBoundingClientRect().width;
  link.click();
  const close = box.querySelector('a.zoom-close');
  return JSON.stringify({before, after: image.getBoundingClientRect().width,
                         natural: image.naturalWidth, position: getComputedStyle(box).position,
                         close: getComputedStyle(close).display, target: location.hash,
                         box: box.id});
})()"""

#: Closes the enlarged view with its "close" link.
ZOOM_CLOSE = """(() => {
  const box = document.querySelector('.zoom:target');
  if (box === null) return JSON.stringify(null);
  box.querySelector('a.zoom-close').click();
  return JSON.stringify({position: getComputedStyle(box).position, target: location.hash});
})()"""


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class DevToolsPipe:
    """Minimal Chrome DevTools protocol client over ``--remote-debugging-pipe``."""

    def __init__(self, browser: str, profile: Path):
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        # move the child's ends clear of 3/4 before dup2 puts them there
        high_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
        high_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
        os.close(to_child_r)
        os.close(from_child_w)

        def wire():
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.process = subprocess.Popen(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=wire,
            pass_fds=(3, 4),
        )
        os.close(high_r)
        os.close(high_w)
        self.writer, self.reader = to_child_w, from_child_r
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer from the browser")
            ready, _, _ = select.select([self.reader], [], [], remaining)
            if ready:
                chunk = os.read(self.reader, 1 << 20)
                if not chunk:
                    raise RuntimeError("the browser closed the DevTools pipe")
                self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        command = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            command["sessionId"] = session
        os.write(self.writer, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            message = self._read_message(deadline)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, session: str) -> dict:
        deadline = time.monotonic() + TIMEOUT_S
        for event in self.events:
            if event.get("method") == method and event.get("sessionId") == session:
                return event
        while True:
            message = self._read_message(deadline)
            self.events.append(message)
            if message.get("method") == method and message.get("sessionId") == session:
                return message

    def close(self):
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.writer)
        os.close(self.reader)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    path = find_browser()
    if path is None:
        pytest.skip("no Chromium installed (Debian: apt-get install -y chromium)")
    client = DevToolsPipe(path, tmp_path_factory.mktemp("chromium-profile"))
    try:
        client.version = client.send("Browser.getVersion")["product"]
    except (RuntimeError, TimeoutError, OSError) as error:
        client.close()
        pytest.skip(f"{path} is installed but does not start headless: {error}")
    yield client
    client.close()


def _evaluate(client: DevToolsPipe, session: str, expression: str):
    return json.loads(client.send("Runtime.evaluate",
                                  {"expression": expression, "returnByValue": True},
                                  session)["result"]["value"])


def render(client: DevToolsPipe, page: Path, screenshot: Path, zoom: bool = False) -> dict:
    """Load ``page``; return console errors, exceptions, image and legend facts; save a PNG.

    ``zoom``: then click the first outline figure, screenshot the enlarged view (viewport
    only, ``<screenshot>-zoom.png``: ``facts["zoom"]``), and close it again."""
    target = client.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = client.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"
    ]
    for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
        client.send(domain, session=session)
    client.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": VIEW_WIDTH, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        session,
    )
    start = len(client.events)
    client.send("Page.navigate", {"url": page.resolve().as_uri()}, session)
    client.wait_for("Page.loadEventFired", session)
    facts = _evaluate(client, session, INSPECT)
    client.send(
        "Emulation.setDeviceMetricsOverride",
        {
            "width": VIEW_WIDTH,
            "height": int(facts["height"]),
            "deviceScaleFactor": 1,
            "mobile": False,
        },
        session,
    )
    shot = client.send(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session
    )
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    if zoom:
        facts["zoom"] = _evaluate(client, session, ZOOM_OPEN)
        client.send("Emulation.setDeviceMetricsOverride",
                    {"width": VIEW_WIDTH, "height": 900, "deviceScaleFactor": 1,
                     "mobile": False}, session)
        enlarged = client.send("Page.captureScreenshot", {"format": "png"}, session)
        zoomed = screenshot.with_name(screenshot.stem + "-zoom.png")
        zoomed.write_bytes(base64.b64decode(enlarged["data"]))
        if facts["zoom"] is not None:
            facts["zoom"]["screenshot"] = str(zoomed)
            facts["zoom"]["closed"] = _evaluate(client, session, ZOOM_CLOSE)
    events = [e for e in client.events[start:] if e.get("sessionId") == session]
    facts["errors"] = [
        json.dumps(e["params"])[:300]
        for e in events
        if (
            e["method"] == "Runtime.consoleAPICalled"
            and e["params"]["type"] in ("error", "assert")
        )
        or e["method"] == "Runtime.exceptionThrown"
        or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]
    client.send("Target.closeTarget", {"targetId": target})
    return facts


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = os.environ.get("LEGSEG_TEST_ARTIFACTS")
    return Path(folder) if folder else tmp_path_factory.mktemp("report-screenshots")


@pytest.fixture(autouse=True)
def _record_browser(browser, artifacts):
    """Keep the browser version next to the screenshots."""
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "browser.txt").write_text(browser.version + "\n")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    bids, out, results = build_outputs(root, subjects=3, probabilities=True)
    write_participant_outputs(results, bids, out, ff_erosion=1)
    assert group.run_group(out) == 0
    return out, results


def test_checker_sees_broken_pages(browser, tmp_path):
    """Control: a console error and an undecodable image are caught (the checks can fail)."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><body><img src="data:image/png;base64,AAAA">'
        "<script>console.error('boom'); undefinedFunction();</script></body></html>"
    )
    facts = render(browser, page, tmp_path / "broken.png")
    assert len(facts["errors"]) >= 2
    assert facts["images"][0]["width"] == 0


def test_subject_report_in_the_browser(browser, outputs, artifacts):
    out, results = outputs
    for result in results:
        subject = result.image.subject
        facts = render(browser, out / f"sub-{subject}.html", artifacts / f"sub-{subject}.png",
                       zoom=True)
        assert facts["errors"] == []
        assert facts["external"] == []
        assert len(facts["images"]) >= 4  # mosaic, coronal, positions, confidence
        assert all(image["complete"] and image["width"] > 0 for image in facts["images"])
        present = sorted(int(v) for v in np.unique(result.labels_ras) if v)
        assert facts["legends"] == [present]
        assert (artifacts / f"sub-{subject}.png").stat().st_size > 10_000
        assert_qc_box(facts)
        assert_figures(facts)
        assert_zoom(facts, present)
        (box,) = assert_model_boxes(facts)
        assert box["id"] == "legseg-upperleg-test"
        assert facts["verdicts"] == [
            "both legs, decided by classifier+geometry; classifier and geometry: agree (Both)"]


def assert_figures(facts: dict) -> None:
    """Image | outline pairs of the representative slices, visible and large (a 1.5 mm
    boundary spans >= 3 pixels at natural size), each opening on a click; their filled
    variant folded; outlined mosaic and reformats."""
    figures = facts["figures"]
    pairs = [f for f in figures if f["view"] == "axial" and f["overlay"] == "outline"]
    assert len(pairs) >= 3
    for figure in pairs:
        assert not figure["folded"] and figure["shown"] >= 0.9 * min(figure["width"], 1200)
        assert figure["width"] >= 1200 and figure["link"].endswith("-full")
    filled = [f for f in figures if f["overlay"] == "filled"]
    assert len(filled) == len(pairs) and all(f["folded"] for f in filled)
    views = {f["view"] for f in figures if f["overlay"] == "outline"}
    assert {"mosaic", "coronal", "sagittal"} <= views


def assert_zoom(facts: dict, present: list[int]) -> None:
    """A click opens the figure over the page at its natural size; the enlarged view shows
    the grey image and the labels' outlines in their report colours; "close" closes it."""
    import matplotlib.image as mpimg

    from legseg_tf.labels import report_rgb

    zoom = facts["zoom"]
    assert zoom is not None and zoom["position"] == "fixed" and zoom["close"] != "none"
    assert zoom["target"] == "#" + zoom["box"]
    assert zoom["after"] == zoom["natural"] > zoom["before"]
    assert zoom["closed"]["position"] == "static"
    pixels = np.round(mpimg.imread(zoom["screenshot"])[..., :3] * 255).astype(int)
    colours = {index: np.all(pixels == report_rgb(index), axis=-1).sum() for index in present}
    outlined = [index for index, count in colours.items() if count >= 20]
    assert len(outlined) >= min(2, len(present)), colours
    grey = (pixels[..., 0] == pixels[..., 1]) & (pixels[..., 1] == pixels[..., 2])
    assert (grey & (pixels[..., 0] > 60) & (pixels[..., 0] < 250)).sum() > 10_000


def assert_model_boxes(facts: dict) -> list[dict]:
    """At least one visible model box with its three headings."""
    boxes = facts["models"]
    assert boxes
    for box in boxes:
        assert box["visible"] and box["id"]
        for heading in ("Training data", "Unseen-subject Dice", "Labels never segmented"):
            assert heading in box["text"], box
    return boxes


def test_group_report_in_the_browser(browser, outputs, artifacts):
    out, _ = outputs
    facts = render(browser, out / "group.html", artifacts / "group.png")
    assert facts["errors"] == []
    assert facts["external"] == []
    assert len(facts["images"]) >= 4
    assert all(image["complete"] and image["width"] > 0 for image in facts["images"])
    page = (out / "group.html").read_text()
    links = re.findall(r'href="(sub-\d+\.html)"', page)
    assert links == ["sub-01.html", "sub-02.html", "sub-03.html"]
    assert all((out / link).exists() for link in links)
    summary = facts["summary"]
    assert summary[:4] == ["muscle", "abbreviation", "images left", "images right"]
    assert summary.index("volume (ml) right") == summary.index("volume (ml) left") + 1


def test_demo_dataset_reports_in_the_browser(browser, tmp_path_factory, artifacts, monkeypatch):
    """The demo dataset through the command line (participant, then group), test segmenter."""
    from legseg_tf import cli, demo, pipeline
    from tests.fakes import ThresholdPlaceholderSegmenter

    root = tmp_path_factory.mktemp("demo")
    bids, out = root / "bids", root / "out"
    demo.write_demo(bids, subjects=2)
    monkeypatch.setattr(
        pipeline, "load_segmenter", lambda config, models_dir: ThresholdPlaceholderSegmenter()
    )
    assert cli.main([str(bids), str(out), "participant", "--skip_bids_validator"]) == 0
    assert cli.main([str(bids), str(out), "group"]) == 0
    for name in ("sub-01", "sub-02", "group"):
        facts = render(browser, out / f"{name}.html", artifacts / f"demo-{name}.png")
        assert facts["errors"] == [] and facts["external"] == []
        assert facts["images"] and all(i["complete"] and i["width"] > 0 for i in facts["images"])
        if name != "group":
            assert facts["legends"] == [[55, 56]]
            assert_figures(facts)
            assert [box["id"] for box in assert_model_boxes(facts)] == ["placeholder"]
        assert_qc_box(facts)


def assert_qc_box(facts: dict) -> dict:
    """The "QC flags" box is rendered, visible, above the rest of the page's sections, and
    shows either its flags or "no QC flag raised"."""
    qc = facts["qc"]
    assert qc is not None and qc["visible"] and qc["title"] == "QC flags"
    later = [top for title, top in facts["headings"].items() if title != "QC flags"]
    assert later and qc["top"] < min(later)
    assert qc["flags"] or qc["none"] >= 1
    for flag in qc["flags"]:
        assert flag["css"] in ("qc-warning", "qc-fail") and flag["text"].strip()
    return qc


def test_planted_failure_shows_in_the_flag_boxes(browser, tmp_path_factory, artifacts,
                                                  monkeypatch):
    """A planted 10x left/right asymmetry through the command line: a red FAIL line in the
    subject's box and in the group page's box; the subject page also shows the outlines and
    the box of the planted model, read from its model card in the --models folder."""
    from legseg_tf import cli, demo, pipeline
    from tests.helpers import AsymmetricSegmenter, planted_models

    root = tmp_path_factory.mktemp("planted")
    bids, out = root / "bids", root / "out"
    models = planted_models(root / "models")
    demo.write_demo(bids, subjects=1)
    monkeypatch.setattr(
        pipeline, "load_segmenter", lambda config, models_dir: AsymmetricSegmenter()
    )
    assert cli.main([str(bids), str(out), "participant", "--skip_bids_validator",
                     "--models", str(models), "--region", "upper"]) == 0
    assert cli.main([str(bids), str(out), "group", "--include-failed-qc"]) == 0
    for name in ("sub-01", "group"):
        facts = render(browser, out / f"{name}.html", artifacts / f"planted-{name}.png",
                       zoom=name != "group")
        assert facts["errors"] == [] and facts["external"] == []
        qc = assert_qc_box(facts)
        assert [(f["code"], f["css"]) for f in qc["flags"]] == [("lr_volume_ratio", "qc-fail")]
        assert qc["flags"][0]["color"] == "rgb(164, 0, 0)"
        assert qc["flags"][0]["text"].startswith("FAIL lr_volume_ratio: Vastus lateralis (VL)")
        if name == "sub-01":
            assert_figures(facts)
            assert_zoom(facts, [55, 56])
            (box,) = assert_model_boxes(facts)
            assert box["id"] == "planted" and "Expect a mean Dice of about 0.4" in box["text"]
            assert box["never"] == "41 42 49 50 51 52 65 66 105 106 151"
            assert "Subcutaneous fat (SCF)" in box["text"]
