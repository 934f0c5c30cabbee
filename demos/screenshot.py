"""Screenshot of the Gradio sampler after one generation, taken by headless Chromium (docs/demo.png, one per tab).

    python demos/screenshot.py runs/dmd2-fmnist-quick                 # -> docs/demo.png (1280 x 1000)
    python demos/screenshot.py --out /tmp/demo.png --n 4 --teacher-steps 10
    python demos/screenshot.py --tab video                            # -> docs/demo_video.png (one streamed clip)

It launches demos/gradio_sampler.py on a free loopback port, opens the page with playwright, sets a fixed seed,
clicks Generate, waits for both galleries and the timing table, and saves the viewport. playwright drives the
system Chromium (Debian: ``apt-get install chromium``; or pass --chromium / set $CHROMIUM), since its own browser
download needs a host that build machines cannot reach.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Sequence

DEMO = Path(__file__).resolve().parent / "gradio_sampler.py"
REPO = DEMO.parents[1]
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "chromium", "chromium-browser",
                       "google-chrome")
EXIT_BAD_INPUT = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_demo(demo_args: Sequence[str], timeout: float = 180.0, command: Sequence[str] | None = None,
                 env: dict[str, str] | None = None) -> Iterator[str]:
    """Start the demo in a subprocess on a free loopback port; yield its URL once it answers; stop it afterwards.

    ``command`` launches it (default: this Python on demos/gradio_sampler.py; e.g. ``diffdistill demo``).
    Raises RuntimeError with the demo's own output when it exits early (bad checkpoint, missing gradio) or never
    answers within ``timeout`` seconds."""
    port = free_port()
    command = list(command or [sys.executable, str(DEMO)])
    log = tempfile.TemporaryFile(mode="w+")         # a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen([*command, *demo_args, "--host", "127.0.0.1", "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, cwd=REPO, env=env, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while not _answers(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"the demo did not come up at {url} (exit code {proc.poll()}):\n{log.read()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def find_chromium(explicit: str | None = None) -> str:
    for name in ([explicit] if explicit else []) + [os.environ.get("CHROMIUM", "")] + list(CHROMIUM_CANDIDATES):
        path = shutil.which(name) if name else None
        if path:
            return path
    raise FileNotFoundError("no Chromium found; install one (Debian/Ubuntu: `apt-get install chromium`) or pass "
                            "--chromium PATH")


@contextlib.contextmanager
def _page(url: str, chromium: str, size: tuple[int, int], what: str) -> Iterator:
    """A headless Chromium page (``size`` = width, height) opened at ``url``; a browser error while ``what`` runs is
    one line saying so, without a traceback."""
    from playwright.sync_api import Error as BrowserError
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=chromium, headless=True)
        except BrowserError as err:
            raise RuntimeError(f"playwright could not start {chromium}: {err}") from None
        try:
            page = browser.new_page(viewport={"width": size[0], "height": size[1]})
            page.goto(url, wait_until="networkidle")
            yield page
        except BrowserError as err:       # a timeout or a missing element: say which step, without a traceback
            raise RuntimeError(f"the browser could not {what} at {url}: {err}") from None
        finally:
            browser.close()


def _save(page, out: Path, timeout_s: float) -> Path:
    """Wait until every image has loaded, let the layout settle, and save the viewport to ``out``."""
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)",
                           timeout=timeout_s * 1000)
    page.wait_for_timeout(500)
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out))
    return out


def screenshot(url: str, out: Path, chromium: str, seed: int, n: int, teacher_steps: int | None,
               size: tuple[int, int], timeout_s: float) -> Path:
    """Drive one generation in the page at ``url`` and save the viewport (``size`` = width, height) to ``out``."""
    with _page(url, chromium, size, "drive the demo") as page:
        # elem_ids set in gradio_sampler.py; a fixed seed gives the same picture on every run
        page.locator("#random-seed input[type=checkbox]").uncheck()
        page.locator("#seed input[type=number]").fill(str(seed))
        slider_box = page.locator("#n-images input[type=number]")     # the slider's number box takes typing
        slider_box.fill(str(n))
        slider_box.press("Enter")
        if teacher_steps is not None:
            page.locator(f"#teacher-steps input[value='{teacher_steps}']").check()
        page.locator("#generate").click()
        page.locator("#timings").get_by_text("Student speed-up").wait_for(timeout=timeout_s * 1000)
        return _save(page, out, timeout_s)


def screenshot_video(url: str, out: Path, chromium: str, seed: int, size: tuple[int, int], timeout_s: float) -> Path:
    """Open the video tab at ``url``, stream one clip (the student chunk by chunk, then the teacher) and save the
    viewport once both GIFs and the timings are shown."""
    with _page(url, chromium, size, "drive the video tab") as page:
        page.get_by_role("tab", name="Video (streaming)").click()
        page.locator("#video-seed input[type=number]").fill(str(seed))
        page.locator("#stream").click()
        page.locator("#video-timings").get_by_text("Streaming speed-up").wait_for(timeout=timeout_s * 1000)
        return _save(page, out, timeout_s)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("student", nargs="?", default=None, help="student export (default: the demo's default)")
    p.add_argument("--teacher", default=None, help="teacher export (default: the demo's default)")
    p.add_argument("--tab", choices=("image", "video"), default="image",
                   help="which tab to drive (video: the demo's default causal student and video teacher)")
    p.add_argument("--out", default=None, help="default: docs/demo.png (image tab) or docs/demo_video.png")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--n", type=int, default=8, help="images per model")
    p.add_argument("--teacher-steps", type=int, default=None, help="default: the teacher's own (50)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=1000)
    p.add_argument("--chromium", default=None, help="Chromium executable (default: $CHROMIUM or the system one)")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds for start-up and for the generation")
    args = p.parse_args(argv)
    demo_args = ([args.student] if args.student else []) + (["--teacher", args.teacher] if args.teacher else [])
    try:
        chromium = find_chromium(args.chromium)
        out = Path(args.out or REPO / "docs" / ("demo.png" if args.tab == "image" else "demo_video.png"))
        with running_demo(demo_args, args.timeout) as url:
            if args.tab == "image":
                out = screenshot(url, out, chromium, args.seed, args.n, args.teacher_steps,
                                 (args.width, args.height), args.timeout)
            else:
                out = screenshot_video(url, out, chromium, args.seed, (args.width, args.height), args.timeout)
    except (FileNotFoundError, RuntimeError, ModuleNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
