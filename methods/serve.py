"""`serve`: a local web page that signs what you type, served by the standard library.

Why the standard library and not Gradio: the page needs one form, one JSON endpoint and two images; Gradio would add
~40 packages (FastAPI, uvicorn, pydantic, ...) to an offline-first install and a front end that phones home for
fonts and analytics. ThreadingHTTPServer takes requests concurrently; one lock runs them through the model one at
a time (a queue), and a request beyond MAX_WAITING is told the server is busy instead of waiting minutes.
"""
from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from methods.sampling import SamplingSettings, load_ema_model, sample_captions, sample_seed, save_gifs, unknown_words
from methods.tb_images import frame_strip, png_bytes, upscale
from utils.atomic import atomic_write
from utils.errors import UserError

PAGE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_page.html")
MAX_TEXT = 300  # characters: a sentence or two; longer text is a message on the page, not a model input
MAX_BODY = 16_384  # bytes of a request body read at most
MAX_WAITING = 8  # requests queued behind the one generating before new ones are told to come back
MAX_GUIDANCE, MAX_SEED = 30.0, 2 ** 31 - 1
OUTPUT_NAME = re.compile(r"^[A-Za-z0-9_-]+\.(gif|png)$")  # what the server writes, so all it serves
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
STRIP_MIN_SIDE = 96  # strip frames are upscaled (nearest) to at least this many pixels


class SignModel:
    """The EMA model, its text encoder and sampler defaults, loaded once; `sign` runs one request at a time."""

    def __init__(self, source: str, out_dir: str, device):
        from models.text_encoder import FrozenTextEncoder

        self.cfg, self.model, self.diffusion, self.state = load_ema_model(source, device)
        self.encoder = FrozenTextEncoder(self.cfg.text.encoder, self.cfg.text.max_length, device)
        self.defaults = SamplingSettings.resolve(self.cfg.diffusion)
        self.device, self.out_dir = device, out_dir
        self.lock, self.waiting, self.count_lock = threading.Lock(), 0, threading.Lock()

    def info(self) -> dict:
        c = self.cfg
        return {"arch": c.model.arch, "frames": c.data.num_frames, "size": c.data.image_size,
                "steps": self.defaults.steps, "guidance": self.defaults.guidance, "max_steps": c.diffusion.timesteps,
                "max_text": MAX_TEXT, "examples": list(self.state.get("sample_prompts") or c.train.sample_prompts)}

    def check(self, request: dict) -> tuple[str, SamplingSettings, int]:
        """The request's caption, sampler settings and seed; anything unusable is a UserError for the page."""
        text = request.get("text")
        if not isinstance(text, str) or not text.strip():
            raise UserError("type a caption first (it is empty)")
        if len(text) > MAX_TEXT:
            raise UserError(f"the caption is {len(text)} characters long: keep it under {MAX_TEXT}")
        if CONTROL.search(text):
            raise UserError("the caption holds control characters (tabs, line breaks, ...): type plain text")
        try:
            steps, guidance, seed = int(request.get("steps")), float(request.get("guidance")), int(request.get("seed"))
        except (TypeError, ValueError):
            raise UserError("steps, guidance and seed must be numbers") from None
        if not 0 <= guidance <= MAX_GUIDANCE:
            raise UserError(f"guidance must be between 0 and {MAX_GUIDANCE:g}")
        if not 0 <= seed <= MAX_SEED:
            raise UserError(f"seed must be between 0 and {MAX_SEED}")
        settings = SamplingSettings.resolve(self.cfg.diffusion, steps=steps, guidance=guidance, sampler="ddim")
        return " ".join(text.split()), settings, seed

    def sign(self, request: dict) -> dict:
        text, settings, seed = self.check(request)
        with self.count_lock:
            if self.waiting > MAX_WAITING:
                raise UserError(f"{self.waiting} requests are waiting: try again in a minute")
            self.waiting += 1
        try:
            with self.lock:
                t0 = time.perf_counter()
                clips = sample_captions(self.cfg, self.model, self.diffusion, self.encoder, [text], settings,
                                        [sample_seed(seed, text, 0)], self.device)
                (gif,) = save_gifs(clips, [text], self.out_dir, suffix=f"_seed{seed}")
                strip = os.path.splitext(gif)[0] + ".png"
                with atomic_write(strip) as f:
                    f.write(png_bytes(frame_strip(upscale(clips[0], STRIP_MIN_SIDE))))
                seconds = time.perf_counter() - t0
        finally:
            with self.count_lock:
                self.waiting -= 1
        return {"text": text, "gif": f"/outputs/{os.path.basename(gif)}",
                "strip": f"/outputs/{os.path.basename(strip)}",
                "frames": int(clips.shape[1]), "seconds": round(seconds, 2), "steps": settings.steps,
                "guidance": settings.guidance, "seed": seed, "unknown_words": unknown_words([text], self.state)}


def make_handler(model: SignModel, page: bytes):
    class Handler(BaseHTTPRequestHandler):
        """GET / (the page), GET /api/info, POST /api/generate, GET /outputs/<file this server wrote>."""
        server_version = "Text2Sign"

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/":
                return self.send(HTTPStatus.OK, page, "text/html; charset=utf-8")
            if path == "/api/info":
                return self.json(HTTPStatus.OK, model.info())
            if path.startswith("/outputs/"):
                return self.output(path[len("/outputs/"):])
            self.json(HTTPStatus.NOT_FOUND, {"error": "not found"})

        def do_POST(self):
            if self.path != "/api/generate":
                return self.json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 < length <= MAX_BODY:
                return self.json(HTTPStatus.BAD_REQUEST, {
                    "error": f"the request must be 1 to {MAX_BODY} bytes of JSON (the caption is at most {MAX_TEXT} "
                             f"characters)"})
            try:
                request = json.loads(self.rfile.read(length).decode("utf-8"))
                if not isinstance(request, dict):
                    raise ValueError
            except (UnicodeDecodeError, ValueError):
                return self.json(HTTPStatus.BAD_REQUEST, {"error": "the request is not a JSON object"})
            try:
                self.json(HTTPStatus.OK, model.sign(request))
            except UserError as err:
                self.json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            except Exception as err:  # a model failure: the page says so, the server keeps serving
                msg = str(err).splitlines()[0][:200] if str(err) else ""
                print(f"warning: generation failed ({type(err).__name__}: {msg})", file=sys.stderr)
                self.json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"generation failed ({type(err).__name__})"})

        def output(self, name: str):
            """Only files this server wrote: a plain name (no folders, no dots but the suffix) in out_dir."""
            path = os.path.join(model.out_dir, name)
            if not OUTPUT_NAME.match(name) or not os.path.isfile(path):
                return self.json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            with open(path, "rb") as f:
                self.send(HTTPStatus.OK, f.read(), "image/gif" if name.endswith(".gif") else "image/png")

        def json(self, status, payload: dict):
            self.send(status, json.dumps(payload).encode("utf-8"), "application/json")

        def send(self, status, body: bytes, kind: str):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):  # one quiet line per request on stderr
            sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

    return Handler


def serve(source: str, host: str, port: int, out_dir: str, device) -> None:
    """Serve until Ctrl-C; prints the page's address (port 0: a free port) once it accepts connections."""
    from methods.experiment import check_output_dirs

    check_output_dirs({"--output_dir": out_dir})
    model = SignModel(source, out_dir, device)
    with open(PAGE_FILE, "rb") as f:
        page = f.read()
    try:
        server = ThreadingHTTPServer((host, port), make_handler(model, page))
    except OSError as err:
        raise UserError(f"cannot listen on {host}:{port} ({err.strerror or err})") from None
    server.daemon_threads = True
    shown = f"[{host}]" if ":" in host else host
    print(f"Text2Sign page: http://{shown}:{server.server_address[1]}/  ({model.cfg.model.arch}; outputs in "
          f"{out_dir}; Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
