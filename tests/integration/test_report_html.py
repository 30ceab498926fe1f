"""`report --out report.html` as a user opens it: one self-contained page, loaded in a real browser (headless
Chromium, driven through its command line): every image decodes, no script error, a screenshot for the eye."""

import re
import shutil
import subprocess

import pytest

from alignit_probe.cli import main

PROMPTS = ["photo of a <new1> cat on the beach", "a <new1> cat wearing a red hat"]
SELFCHECK = re.compile(r'<pre id="selfcheck" hidden="">images: (\d+), broken: (\d+), errors: (\d+), height: (\d+)')
CONSOLE_ERROR = re.compile(r"Uncaught|ERROR:CONSOLE|CONSOLE[^\]]*\] \"[^\"]*error", re.IGNORECASE)


@pytest.fixture(scope="module")
def browser():
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    if exe is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium)")
    return exe


def model_args(toy_dir, cd_dir):
    args = ["--baseline", toy_dir, "--custom", cd_dir, "--concept", "<new1>", "--class-word", "cat", "--no-progress"]
    return args + [x for p in PROMPTS for x in ("--prompt", p)]


def chromium(exe, tmp_path, *flags, timeout=180):
    """Run headless Chromium once; (stdout, stderr). Console messages land in stderr (--enable-logging)."""
    cmd = [
        exe,
        "--headless=new",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        *flags,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return done.stdout, done.stderr


def open_in_browser(exe, page, tmp_path, screenshot):
    """(self-check numbers, console error lines) of the page, and a full-height screenshot of it."""
    dom, log = chromium(exe, tmp_path, "--dump-dom", page.as_uri())
    found = SELFCHECK.search(dom)
    assert found, "the page's self-check did not run: " + dom[-500:] + log[-2000:]
    images, broken, errors, height = map(int, found.groups())
    size = f"--window-size=1200,{height + 40}"
    _, shot_log = chromium(exe, tmp_path, f"--screenshot={screenshot}", size, page.as_uri())
    console = [ln for ln in (log + shot_log).splitlines() if CONSOLE_ERROR.search(ln)]
    return dict(images=images, broken=broken, errors=errors), console


def test_report_html_opens_in_a_browser(toy_dir, cd_dir, tmp_path, browser, capsys):
    """(The folder output, ``report --out DIR``, is checked in test_models.)"""
    att = tmp_path / "maps"
    argv = ["attention", *model_args(toy_dir, cd_dir), "--steps", "2", "--alignit", "--out", str(att)]
    assert main(argv) == 0

    page = tmp_path / "report.html"
    assert main(["report", str(att / "store.zarr"), "--out", str(page)]) == 0
    html = page.read_text()
    for section in ("did they load?", "Stage by stage", "K and V per cross-attention layer", "Token by token"):
        assert section in html
    for section in ("Token embeddings", "Cross-attention maps", "Configuration"):
        assert section in html
    assert "Customized models side by side" not in html  # one customized model: no checkpoint section
    for label in ("1 − Pearson r", "Jensen–Shannon divergence (bits)", "1 − IoU"):  # attention metrics, readable
        assert f"<td>{label}</td>" in html
    assert not re.search(r"<td>(one_minus_pearson|jensen_shannon|one_minus_iou)</td>", html)
    sources = re.findall(r'<img src="([^"]*)"', html)
    assert len(sources) >= 8 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"<(link|script)[^>]+(href|src)=", html) and "http://" not in html and "https://" not in html
    assert not list(tmp_path.glob(".*.partial"))

    screenshot = tmp_path / "report.png"
    check, console = open_in_browser(browser, page, tmp_path, screenshot)
    assert check == dict(images=len(sources), broken=0, errors=0), check
    assert not console, console
    assert screenshot.stat().st_size > 50_000
    capsys.readouterr()
    print(f"screenshot: {screenshot}")


def test_report_image_arguments_that_name_no_file(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    for spec, message in ((str(tmp_path / "imgs"), "is a folder"), ("T=", "names no file")):
        rc = main(["report", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "r.html"), "--image", spec])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "r.html").exists()


def test_report_html_errors_leave_nothing(tmp_path, capsys):
    page = tmp_path / "report.html"
    assert main(["report", str(tmp_path / "missing.zarr"), "--out", str(page)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    page.write_text("mine")
    assert main(["report", str(tmp_path / "missing.zarr"), "--out", str(page)]) == 2
    assert "already exists" in capsys.readouterr().err and page.read_text() == "mine"


def test_report_images_that_are_not_png_are_one_line(tmp_path):
    """``--image`` takes PNG files (embedded as PNG data URIs): anything else is refused before anything is written."""
    from PIL import Image

    from alignit_probe.errors import ProbeError
    from alignit_probe.viz.sections import images_section

    text, jpeg, png = tmp_path / "p.txt", tmp_path / "g.jpg", tmp_path / "fake.png"
    text.write_text("a prompt")
    Image.new("RGB", (4, 4)).save(jpeg)
    png.write_text("not an image")
    for path, message in ((text, "cannot be read"), (png, "cannot be read"), (jpeg, "is a JPEG file")):
        with pytest.raises(ProbeError, match=f"image .*{path.name} {message}"):
            images_section({"x": path})
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    assert images_section({"x": tmp_path / "ok.png"})[0]["uri"].startswith("data:image/png;base64,")
