"""`serve`: the page's API answers bad text with a message, queues concurrent requests, serves only what it wrote;
and in headless Chromium, typing a caption and clicking Generate shows an animated GIF of the configured frames."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest
from PIL import Image

from conftest import ROOT

FRAMES = 4  # the tiny checkpoint's data.num_frames


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    """`python main.py serve` on a free loopback port; yields (base URL, output folder)."""
    _, ckpt = tiny_checkpoint
    out = tmp_path_factory.mktemp("serve") / "out"
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), "serve", "--checkpoint", ckpt, "--port",
                             "0", "--output_dir", str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    assert line.startswith("Text2Sign page: http://127.0.0.1:"), line  # loopback unless --host says otherwise
    url = line.split()[2].rstrip("/")
    yield url, out
    proc.terminate()
    proc.wait(timeout=30)


def post(url, payload, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(payload).encode()
    req = urllib.request.Request(url + "/api/generate", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def gif_frame_count(data: bytes) -> int:
    return Image.open(io.BytesIO(data)).n_frames


REQUEST = {"guidance": 3, "steps": 3, "seed": 1}


def test_a_caption_becomes_an_animated_gif_and_a_frame_strip(server):
    url, out = server
    status, reply = post(url, {"text": "hello", **REQUEST})
    assert status == 200, reply
    assert (reply["frames"], reply["steps"], reply["seed"], reply["unknown_words"]) == (FRAMES, 3, 1, [])
    status, gif = get(url + reply["gif"])
    assert status == 200 and gif_frame_count(gif) == FRAMES
    status, strip = get(url + reply["strip"])
    assert status == 200 and Image.open(io.BytesIO(strip)).format == "PNG"
    assert sorted(os.listdir(out)) == ["hello_seed1.gif", "hello_seed1.png"]


@pytest.mark.parametrize("text, needle", [
    ("", "type a caption first"),
    ("   ", "type a caption first"),
    ("x" * 10_000, "is 10000 characters long"),
    ("hello\x00there", "control characters"),
    ("hello\nthere", "control characters"),
])
def test_bad_text_gets_a_message_and_writes_nothing(server, text, needle):
    url, out = server
    before = set(os.listdir(out)) if out.exists() else set()
    status, reply = post(url, {"text": text, **REQUEST})
    assert status == 400 and needle in reply["error"], reply
    assert (set(os.listdir(out)) if out.exists() else set()) == before


def test_bad_requests_and_settings_are_messages(server):
    url, _ = server
    assert post(url, None, raw=b"{not json")[0] == 400
    assert post(url, None, raw=b"x" * 20_000)[1]["error"].startswith("the request must be 1 to 16384 bytes")
    assert "steps, guidance and seed must be numbers" in post(url, {"text": "hi", "steps": "many", "guidance": 1,
                                                                    "seed": 0})[1]["error"]
    assert "--steps must be in [1, " in post(url, {"text": "hi", **REQUEST, "steps": 0})[1]["error"]
    assert "guidance must be between 0 and 30" in post(url, {"text": "hi", **REQUEST, "guidance": 1e9})[1]["error"]


def test_words_the_model_never_saw_are_named(server):
    status, reply = post(server[0], {"text": "hello zebra", **REQUEST})
    assert status == 200 and reply["unknown_words"] == ["zebra"]


def test_concurrent_requests_are_queued_not_crashed(server):
    url, _ = server
    replies = [None] * 3

    def one(i):
        replies[i] = post(url, {"text": "thank you", **REQUEST, "seed": 10 + i})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert [r[0] for r in replies] == [200, 200, 200], replies
    assert len({r[1]["gif"] for r in replies}) == 3


@pytest.mark.parametrize("path", ["/outputs/../config.json", "/outputs/..%2f..%2fetc%2fpasswd", "/outputs/.hidden.gif",
                                  "/outputs/x/../../README.md", "/etc/passwd", "/outputs/"])
def test_only_files_the_server_wrote_are_served(server, path):
    status, _ = get(server[0] + path)
    assert status == 404


def browser():
    """Headless Chromium through Selenium and Debian's chromedriver, or a skip naming what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("chromium / chromedriver are not installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,900"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver))


def test_in_a_browser_typing_and_clicking_generate_shows_the_animated_gif(server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = server
    page = browser()
    try:
        page.get(url + "/")
        wait = WebDriverWait(page, 120)
        wait.until(lambda p: p.find_element(By.ID, "steps").get_attribute("value"))  # /api/info filled the form
        page.find_element(By.ID, "steps").clear()
        page.find_element(By.ID, "steps").send_keys("3")
        page.find_element(By.ID, "text").send_keys("hello thank you")
        page.find_element(By.ID, "generate").click()
        wait.until(EC.visibility_of_element_located((By.ID, "gif")))
        src = page.find_element(By.ID, "gif").get_attribute("src")
        assert src.endswith("_seed0.gif")
        loaded = page.execute_script("const g = document.getElementById('gif'); return g.complete && g.naturalWidth;")
        assert loaded == 16  # the browser decoded it: 16 x 16 pixels
        status, gif = get(src)
        assert status == 200 and gif_frame_count(gif) == FRAMES
        assert page.find_element(By.ID, "download").get_attribute("href") == src

        page.find_element(By.ID, "text").clear()  # an empty caption: a message on the page, no new clip
        page.find_element(By.ID, "generate").click()
        wait.until(lambda p: "type a caption first" in p.find_element(By.ID, "status").text)
        assert "error" in page.find_element(By.ID, "status").get_attribute("class")
    finally:
        page.quit()
