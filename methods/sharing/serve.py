"""`serve`: a local web page that signs what you type, served by the standard library.

Why the standard library and not Gradio: the page needs one form, one JSON endpoint and two images; Gradio would add
~40 packages (FastAPI, uvicorn, pydantic, ...) to an offline-first install and a front end that phones home for
fonts and analytics. ThreadingHTTPServer takes requests concurrently; one lock runs them through the model one at
a time (a queue), and a request beyond MAX_WAITING is told the server is busy (503) instead of waiting minutes.

It is written for a hostile network as well as a friendly page: other web pages can make the browser POST here
(refused by Origin/Referer and by demanding a JSON content type, which a cross-site form cannot send without a CORS
preflight we never grant), a name pointed at 127.0.0.1 by DNS rebinding is refused by its Host, and only the exact
files this process wrote are served, so nothing planted in the output folder (a symlink, an older file) leaks.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from methods.pipeline import SignPipeline
from methods.sampling import SamplingSettings
from utils.images import frame_strip, png_bytes, upscale
from utils.atomic import atomic_write
from utils.errors import UserError
from utils.safe_json import parse_json

PAGE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_page.html")
MAX_TEXT = 300  # characters: a sentence or two; longer text is a message on the page, not a model input
MAX_BODY = 16_384  # bytes of a request body read at most
MAX_WAITING = 8  # requests queued behind the one generating before new ones are told to come back
MAX_GUIDANCE, MAX_SEED = 30.0, 2 ** 31 - 1
READ_TIMEOUT = 30.0  # seconds a client may stall mid-request before it is answered and dropped, not waited on forever
QUEUE = 128  # connections the kernel holds until accepted: a burst beyond the default 5 was reset, not answered
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
STRIP_MIN_SIDE = 96  # strip frames are upscaled (nearest) to at least this many pixels


class Busy(Exception):
    """More than MAX_WAITING requests are queued: a 503, so a client knows to come back rather than fix its request."""


def number(request: dict, key: str, default, whole: bool):
    """request[key] as a number: a JSON number or a numeric string (an HTML number input's value); absent or null is
    the default. Booleans are refused though Python counts them as ints: `"steps": true` is a mistake."""
    value = request.get(key)
    if value is None:
        return default
    x = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            x = float(value)
        except (ValueError, OverflowError):  # OverflowError: an int past float's range, far past every limit anyway
            pass
    if x is None:
        raise UserError(f"steps, guidance and seed must be numbers ({key} is {json.dumps(value)[:40]})")
    if not whole:  # guidance: the range check below also refuses inf and nan (every comparison with nan is False)
        return x
    if isinstance(value, int):  # exact even past 2**53, so a huge seed is named as out of range, not rounded
        return value
    if not x.is_integer():  # inf and nan included
        raise UserError(f"{key} must be a whole number, got {value}")
    return int(x)


class SignModel:
    """The sampling pipeline, loaded once, behind a queue: `sign` runs one request at a time."""

    def __init__(self, source: str, out_dir: str, device):
        self.pipe = SignPipeline.from_pretrained(source, device)
        self.cfg, self.state, self.defaults = self.pipe.cfg, self.pipe.state, self.pipe.defaults
        self.out_dir = out_dir
        self.lock, self.waiting, self.count_lock = threading.Lock(), 0, threading.Lock()
        # name -> (device, inode) of each file this process wrote: only those exact files are ever served
        self.written: dict[str, tuple[int, int]] = {}

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
        steps = number(request, "steps", self.defaults.steps, whole=True)
        guidance = number(request, "guidance", self.defaults.guidance, whole=False)
        seed = number(request, "seed", 0, whole=True)
        if not 0 <= guidance <= MAX_GUIDANCE:
            raise UserError(f"guidance must be between 0 and {MAX_GUIDANCE:g}")
        if not 0 <= seed <= MAX_SEED:
            raise UserError(f"seed must be between 0 and {MAX_SEED}")
        settings = self.pipe.settings(steps=steps, guidance=guidance, sampler="ddim")
        return " ".join(text.split()), settings, seed

    def sign(self, request: dict) -> dict:
        text, settings, seed = self.check(request)
        with self.count_lock:
            if self.waiting > MAX_WAITING:
                raise Busy(f"the server is busy: {self.waiting} requests are waiting, try again in a minute")
            self.waiting += 1
        try:
            with self.lock:
                t0 = time.perf_counter()
                clips = self.pipe([text], seed=seed, settings=settings)
                (gif,) = self.pipe.save(clips, [text], self.out_dir, suffix=f"_seed{seed}")
                strip = os.path.splitext(gif)[0] + ".png"
                with atomic_write(strip) as f:
                    f.write(png_bytes(frame_strip(upscale(clips[0], STRIP_MIN_SIDE))))
                for path in (gif, strip):
                    st = os.lstat(path)
                    self.written[os.path.basename(path)] = (st.st_dev, st.st_ino)
                seconds = time.perf_counter() - t0
        finally:
            with self.count_lock:
                self.waiting -= 1
        return {"text": text, "gif": f"/outputs/{os.path.basename(gif)}",
                "strip": f"/outputs/{os.path.basename(strip)}",
                "frames": int(clips.shape[1]), "seconds": round(seconds, 2), "steps": settings.steps,
                "guidance": settings.guidance, "seed": seed, "unknown_words": self.pipe.unknown_words([text])}

    def output(self, name: str) -> bytes | None:
        """The bytes of a file this process wrote, or None: any other name, or a written name that is now another
        file (replaced by a symlink, a FIFO, a copy), is not served. O_NOFOLLOW refuses a symlink at open, so no
        check-then-open race; O_NONBLOCK keeps a FIFO from blocking the thread."""
        identity = self.written.get(name)
        if identity is None:
            return None
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(os.path.join(self.out_dir, name), flags)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != identity:
                return None
            return f.read()


def local_host(host: str | None) -> bool:
    """Whether a Host header names this machine (localhost or a loopback address); no Host is not a browser."""
    if host is None:
        return True
    try:
        name = urlsplit("//" + host).hostname or ""
    except ValueError:
        return False
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def make_handler(model: SignModel, page: bytes):
    class Handler(BaseHTTPRequestHandler):
        """GET / (the page), GET /api/info, POST /api/generate, GET /outputs/<file this server wrote>; every other
        request, the standard library's own refusals included, is a JSON error."""
        server_version = "Text2Sign"
        timeout = READ_TIMEOUT

        def parse_request(self):
            """The standard parse, then DNS rebinding refused: a page on evil.example whose name is re-pointed at
            127.0.0.1 is same-origin with itself, so Origin matches Host; only the Host name gives it away."""
            if not super().parse_request():
                return False
            if ipaddress.ip_address(self.server.server_address[0]).is_loopback and \
                    not local_host(self.headers.get("Host")):
                self.json(HTTPStatus.FORBIDDEN, {
                    "error": f"this server answers to localhost / 127.0.0.1 only, not "
                             f"{CONTROL.sub('?', self.headers.get('Host', ''))[:100]!r}"})
                return False
            return True

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/":
                return self.send(HTTPStatus.OK, page, "text/html; charset=utf-8")
            if path == "/api/info":
                return self.json(HTTPStatus.OK, model.info())
            data = model.output(path[len("/outputs/"):]) if path.startswith("/outputs/") else None
            if data is None:
                return self.json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            self.send(HTTPStatus.OK, data, "image/gif" if path.endswith(".gif") else "image/png")

        def do_POST(self):
            if self.path != "/api/generate":
                return self.json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            other = self.other_site()
            if other is not None:
                return self.json(HTTPStatus.FORBIDDEN, {
                    "error": f"refused: a page on another site ({other[:100]!r}) sent this request"})
            if self.headers.get_content_type() != "application/json":
                return self.json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {
                    "error": f"send the request as JSON with Content-Type: application/json "
                             f"(got {CONTROL.sub('?', self.headers.get('Content-Type', 'none'))[:60]!r})"})
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 < length <= MAX_BODY:
                return self.json(HTTPStatus.BAD_REQUEST, {
                    "error": f"the request must be 1 to {MAX_BODY} bytes of JSON (the caption is at most {MAX_TEXT} "
                             f"characters)"})
            try:
                body = self.rfile.read(length)
            except OSError:  # the socket timeout: a client that stopped sending mid-body
                body = b""
            if len(body) < length:
                return self.json(HTTPStatus.BAD_REQUEST, {
                    "error": f"the request body ended before its Content-Length ({length} bytes)"})
            try:
                request = parse_json(body.decode("utf-8"))
            except ValueError:  # UnicodeDecodeError, malformed JSON, nesting past parse_json's bound
                request = None
            if not isinstance(request, dict):
                return self.json(HTTPStatus.BAD_REQUEST, {"error": "the request is not a JSON object"})
            try:
                self.json(HTTPStatus.OK, model.sign(request))
            except UserError as err:
                self.json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            except Busy as err:
                self.json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(err)}, {"Retry-After": "60"})
            except Exception as err:  # a model failure: the page says so, the server keeps serving
                msg = str(err).splitlines()[0][:200] if str(err) else ""
                print(f"warning: generation failed ({type(err).__name__}: {msg})", file=sys.stderr)
                self.json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"generation failed ({type(err).__name__})"})

        def other_site(self) -> str | None:
            """The page that sent this request when it is not this server's own, else None. A page anywhere can make
            the browser POST here; the browser names that page in Origin (or, failing that, Referer). Neither
            header: not a browser (curl, a script), so no other site is involved."""
            source = self.headers.get("Origin")
            if source is None:
                source = self.headers.get("Referer")
            if source is None:
                return None
            try:
                netloc = urlsplit(source).netloc
            except ValueError:
                netloc = ""
            return None if netloc and netloc.lower() == (self.headers.get("Host") or "").lower() else source

        def not_allowed(self):
            self.json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{self.command} is not supported: GET the page, "
                                                               f"POST /api/generate"}, {"Allow": "GET, POST"})

        do_HEAD = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = do_TRACE = do_CONNECT = not_allowed

        def send_error(self, code, message=None, explain=None):
            """The standard library's refusals (an unknown method, a malformed request line, over-long headers)
            as JSON like every other answer, not its HTML page."""
            self.close_connection = True
            self.json(code, {"error": message or self.responses.get(code, ("error",))[0]})

        def json(self, status, payload: dict, headers: dict | None = None):
            self.send(status, json.dumps(payload).encode("utf-8"), "application/json", headers)

        def send(self, status, body: bytes, kind: str, headers: dict | None = None):
            self.send_response(status)
            for key, value in {"Content-Type": kind, "Content-Length": str(len(body)), "Cache-Control": "no-store",
                               "X-Content-Type-Options": "nosniff", **(headers or {})}.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":  # a HEAD answer has the headers of a body it does not send
                self.wfile.write(body)

        def log_message(self, fmt, *args):  # one quiet line per request; a hostile path cannot drive the terminal
            sys.stderr.write(CONTROL.sub("?", f"{self.address_string()} {fmt % args}") + "\n")

    return Handler


class Server(ThreadingHTTPServer):
    request_queue_size = QUEUE
    daemon_threads = True

    def handle_error(self, request, client_address):
        """One line, not the standard library's traceback: a client that hung up mid-answer is routine."""
        err = sys.exc_info()[1]
        print(f"warning: a request from {client_address[0]} failed ({type(err).__name__}: {str(err)[:200]})",
              file=sys.stderr)


def make_server(model: SignModel, page: bytes, host: str, port: int) -> Server:
    try:
        return Server((host, port), make_handler(model, page))
    except OSError as err:
        raise UserError(f"cannot listen on {host}:{port} ({err.strerror or err})") from None


def serve(source: str, host: str, port: int, out_dir: str, device) -> None:
    """Serve until Ctrl-C; prints the page's address (port 0: a free port) once it accepts connections."""
    from utils.folders import check_output_dirs

    check_output_dirs({"--output_dir": out_dir})
    model = SignModel(source, out_dir, device)
    with open(PAGE_FILE, "rb") as f:
        page = f.read()
    server = make_server(model, page, host, port)
    shown = f"[{host}]" if ":" in host else host
    print(f"Text2Sign page: http://{shown}:{server.server_address[1]}/  ({model.cfg.model.arch}; outputs in "
          f"{out_dir}; Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
