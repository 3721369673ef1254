"""The README's screenshot of the `serve` page: start the server on a free loopback port, type a caption in headless
Chromium, click Generate, wait for the clip and save the page as a PNG.

    python benchmarks/serve_screenshot.py --model exports/demo --text "yes no please" [--out docs/serve.png]
    (or --checkpoint checkpoints/demo/final.pt); needs chromium, chromium-driver and selenium

--smoke: checks the script in seconds with any checkpoint: the server starts, one clip is generated through the
page's API (2 sampler steps), and the screenshot goes to a temp folder; without chromium / chromedriver it prints
"no chromium: screenshot skipped" and exits 0 after the API check.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint")
    source.add_argument("--model")
    p.add_argument("--text", default="yes no please")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="default: docs/serve.png (a temp folder with --smoke)")
    p.add_argument("--smoke", action="store_true", help="one API request; the screenshot only where chromium is")
    args = p.parse_args()
    args.out = args.out or (os.path.join(tempfile.mkdtemp(prefix="t2s_serve_"), "serve.png") if args.smoke
                            else os.path.join(ROOT, "docs", "serve.png"))
    chromium, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (chromium and driver) and not args.smoke:
        print("error: needs chromium and chromedriver (apt-get install chromium chromium-driver)", file=sys.stderr)
        return 2
    flag, value = ("--checkpoint", args.checkpoint) if args.checkpoint else ("--model", args.model)
    out_dir = tempfile.mkdtemp(prefix="t2s-serve-")
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), "serve", flag, value, "--port", "0",
                               "--output_dir", out_dir], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().split()[2]
        if args.smoke:
            t0 = time.perf_counter()
            body = json.dumps({"text": args.text, "seed": args.seed, "steps": 2}).encode()
            request = urllib.request.Request(url.rstrip("/") + "/api/generate", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=300) as r:
                reply = json.loads(r.read())
            print(f"API: {reply['frames']} frames of {args.text!r} in {time.perf_counter() - t0:.1f} s: {reply['gif']}")
            if not (chromium and driver):
                print("no chromium: screenshot skipped (apt-get install chromium chromium-driver)")
                return 0
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as EC
        from selenium.webdriver.support.ui import WebDriverWait

        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for option in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=960,840",
                       "--hide-scrollbars"):
            options.add_argument(option)
        page = webdriver.Chrome(options=options, service=Service(driver))
        try:
            page.get(url)
            wait = WebDriverWait(page, 300)
            wait.until(lambda d: d.find_element(By.ID, "steps").get_attribute("value"))
            page.find_element(By.ID, "seed").clear()
            page.find_element(By.ID, "seed").send_keys(str(args.seed))
            page.find_element(By.ID, "text").send_keys(args.text)
            page.find_element(By.ID, "generate").click()
            wait.until(EC.visibility_of_element_located((By.ID, "gif")))
            wait.until(lambda d: d.execute_script("return document.getElementById('strip').complete"))
            time.sleep(1.0)  # let the GIF advance past its first frame
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            page.save_screenshot(args.out)
        finally:
            page.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(out_dir, ignore_errors=True)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
