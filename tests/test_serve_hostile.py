"""`serve` against a hostile network: planted symlinks, cross-site posts, bursts, malformed requests, odd methods and
paths. Each answer is a status and a JSON message (never a traceback, a reset or a hang), and only what the server
wrote leaves it. The server runs in this process (so sampling can be stubbed), on 127.0.0.1, port 0."""
from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time

import numpy as np
import pytest
import torch

from methods.pipeline import SignPipeline
from methods.sharing import serve as serve_module

REQUEST = {"text": "hello", "guidance": 3, "steps": 3, "seed": 1}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def model(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "out"
    out.mkdir()
    return serve_module.SignModel(tiny_checkpoint[1], str(out), torch.device("cpu"))


@pytest.fixture
def site(model, monkeypatch):
    """(host, port) of a fresh server for one test, stopped after it; a 1 s read timeout so stalls end quickly."""
    monkeypatch.setattr(serve_module, "READ_TIMEOUT", 1.0)
    server = serve_module.make_server(model, b"<html>page</html>", "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.server_address[:2]
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def ask(site, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) of one request over http.client."""
    conn = http.client.HTTPConnection(*site, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def post(site, payload, headers=JSON, raw: bytes | None = None):
    """(status, JSON answer) of POST /api/generate."""
    status, _, body = ask(site, "POST", "/api/generate", raw if raw is not None else json.dumps(payload).encode(),
                          headers)
    return status, json.loads(body)


def raw(site, data: bytes, wait: float = 15):
    """(status, body) for bytes sent as they are on a socket left open: the server must answer and close."""
    with socket.create_connection(site, timeout=wait) as s:
        s.sendall(data)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def files(model) -> set[str]:
    return set(os.listdir(model.out_dir))


def test_a_planted_symlink_or_a_file_from_elsewhere_is_not_served(site, model, tmp_path):
    secret = tmp_path / "secret.gif"
    secret.write_bytes(b"GIF89a secret from outside the output folder")
    os.symlink(secret, os.path.join(model.out_dir, "planted.gif"))
    with open(os.path.join(model.out_dir, "earlier.gif"), "wb") as f:  # not written by this server process
        f.write(b"GIF89a a file this server never wrote")
    for name in ("planted.gif", "earlier.gif"):
        status, _, body = ask(site, "GET", f"/outputs/{name}")
        assert status == 404 and json.loads(body) == {"error": "not found"}, (name, status, body)

    status, reply = post(site, {**REQUEST, "seed": 71})
    assert status == 200, reply
    assert ask(site, "GET", reply["gif"])[0] == 200
    gif = os.path.join(model.out_dir, os.path.basename(reply["gif"]))
    os.replace(gif, gif + ".moved")
    os.symlink(secret, gif)  # a file it wrote, swapped for a link after the fact
    assert ask(site, "GET", reply["gif"])[0] == 404


@pytest.mark.parametrize("headers, status, needle", [
    ({"Content-Type": "text/plain"}, 415, "application/json"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
    ({}, 415, "application/json"),
    ({**JSON, "Origin": "http://evil.example"}, 403, "another site"),
    ({**JSON, "Origin": "null"}, 403, "another site"),
    ({**JSON, "Origin": "http://127.0.0.1:1"}, 403, "another site"),
    ({**JSON, "Referer": "http://evil.example/page.html"}, 403, "another site"),
    ({**JSON, "Host": "evil.example", "Origin": "http://evil.example"}, 403, "localhost"),  # DNS rebinding
])
def test_a_cross_site_post_is_refused_and_writes_nothing(site, model, headers, status, needle):
    before = files(model)
    got, reply = post(site, REQUEST, headers=headers)
    assert got == status and needle in reply["error"], (got, reply)
    assert files(model) == before


def test_the_pages_own_posts_and_non_browser_clients_are_accepted(site):
    own = f"{site[0]}:{site[1]}"
    for headers in ({**JSON, "Origin": f"http://{own}"}, {**JSON, "Referer": f"http://{own}/"},
                    {"Content-Type": "application/json; charset=utf-8"}, {**JSON, "Host": f"localhost:{site[1]}"}):
        status, reply = post(site, REQUEST, headers=headers)
        assert status == 200, (headers, reply)


def test_a_burst_of_50_gets_clips_or_busy_never_a_reset(site, model, monkeypatch):
    frames, size = model.cfg.data.num_frames, model.cfg.data.image_size

    def slow_sampling(self, captions, **_):
        time.sleep(0.1)
        return np.zeros((len(captions), frames, size, size, 3), np.uint8)

    monkeypatch.setattr(SignPipeline, "__call__", slow_sampling)
    answers = [None] * 50
    go = threading.Event()

    def one(i):
        go.wait()
        try:
            answers[i] = post(site, {**REQUEST, "seed": 1000 + i})
        except Exception as err:  # a reset or a timeout: what the test is here to rule out
            answers[i] = (type(err).__name__, str(err))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(timeout=120)
    statuses = [a[0] for a in answers]
    assert set(statuses) <= {200, 503}, answers
    assert 200 in statuses and 503 in statuses, statuses
    assert all("busy" in a[1]["error"] for a in answers if a[0] == 503), answers


VALID = b'{"text": "hi", "steps": 3, "guidance": 3, "seed": 1, '  # a later key overrides: each case breaks one thing


@pytest.mark.parametrize("body", [VALID + b for b in (
    b'"steps": Infinity}',
    b'"guidance": NaN}',
    b'"guidance": -Infinity}',
    b'"seed": 1e400}',
    b'"steps": true}',
    b'"seed": false}',
    b'"steps": 3.5}',
    b'"seed": "7.25"}',
    b'"steps": 1000000000000000000000000000000}',
    b'"seed": -1000000000000000000000000000000}',
    b'"steps": ' + b"9" * 5000 + b"}",
    b'"steps": 100000}',
    b'"steps": [3]}',
    b'"guidance": {"x": 1}}',
    b'"steps": ""}',
    b'"text": 5}',
    b'"text": ["hi"]}',
    b'"text": null}',
    b'"x": ' + b"[" * 8000 + b"]" * 8000 + b"}",
    b'"x": ' + b'{"a":' * 2000 + b"1" + b"}" * 2000 + b"}",
)] + [b'[{"text": "hi"}]', b'"hi"', b"3", b"null", b"\xff\xfe{\x00}"], ids=lambda b: b.replace(VALID, b"")[:30].decode("latin-1"))
def test_malformed_requests_are_400_with_a_message(site, model, capsys, body):
    before = files(model)
    status, reply = post(site, None, raw=body)
    assert status == 400 and isinstance(reply["error"], str) and reply["error"], reply
    assert files(model) == before
    assert "Traceback" not in capsys.readouterr().err


def test_missing_settings_take_the_models_defaults_and_numbers_may_be_strings(site, model):
    status, reply = post(site, {"text": "hello"})
    assert status == 200, reply
    assert (reply["steps"], reply["guidance"], reply["seed"]) == (model.defaults.steps, model.defaults.guidance, 0)
    status, reply = post(site, {"text": "hello", "steps": "2", "guidance": "1.5", "seed": "5", "extra": None})
    assert status == 200 and (reply["steps"], reply["guidance"], reply["seed"]) == (2, 1.5, 5), reply


GENERATE = b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize("head", [b"", b"Content-Length: -1\r\n", b"Content-Length: abc\r\n",
                                  b"Content-Length: 99999999999\r\n", b"Content-Length: 1e3\r\n"])
def test_a_bad_content_length_is_400(site, head):
    status, body = raw(site, GENERATE + head + b"\r\n" + b'{"text": "hi"}')
    assert status == 400 and "the request must be 1 to 16384 bytes" in json.loads(body)["error"]


def test_a_body_shorter_than_its_content_length_is_400_not_a_hang(site, capsys):
    t0 = time.perf_counter()
    status, body = raw(site, GENERATE + b"Content-Length: 100\r\n\r\n" + b'{"text": "hi"}', wait=15)
    assert status == 400 and "ended before" in json.loads(body)["error"]
    assert time.perf_counter() - t0 < 10  # READ_TIMEOUT (1 s here), not forever
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("method", ["PUT", "DELETE", "OPTIONS", "PATCH", "HEAD", "TRACE", "FROB"])
def test_other_methods_get_a_json_answer(site, capsys, method):
    status, headers, body = ask(site, method, "/api/generate", body=b"{}" if method != "HEAD" else None,
                                headers=JSON)
    assert status in (405, 501) and headers["Content-Type"] == "application/json", (status, headers, body)
    assert headers["X-Content-Type-Options"] == "nosniff"
    if method == "HEAD":
        assert body == b""
    else:
        assert status == 405 or method == "FROB"
        assert "error" in json.loads(body)
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("path", [b"/outputs/../config.json", b"/outputs/%2e%2e/%2e%2e/etc/passwd",
                                  b"/%2e%2e/%2e%2e/etc/passwd", b"/outputs/hello_seed1.gif%00.png",
                                  b"/outputs/hello\x00.gif", b"/api/info\x00", b"/" + b"a" * 20_000,
                                  b"/outputs/" + b"a" * 20_000 + b".gif", b"//etc/passwd", b"/outputs/.",
                                  b"http://evil.example/outputs/x.gif"],
                         ids=lambda p: repr(p[:40]))
def test_odd_paths_are_a_json_404(site, path):
    status, body = raw(site, b"GET " + path + b" HTTP/1.0\r\n\r\n")
    assert status == 404 and json.loads(body) == {"error": "not found"}, (status, body[:200])


def test_every_answer_says_nosniff(site):
    for method, path in (("GET", "/"), ("GET", "/api/info"), ("GET", "/nothing"), ("POST", "/api/generate")):
        status, headers, _ = ask(site, method, path, body=b"[]" if method == "POST" else None, headers=JSON)
        assert headers.get("X-Content-Type-Options") == "nosniff", (method, path, status, headers)


def test_a_hostile_request_line_cannot_write_control_characters_to_the_log(site, capsys):
    assert raw(site, b"GET /\x1b[2J\x1b]0;owned\x07 HTTP/1.0\r\n\r\n")[0] == 404
    err = capsys.readouterr().err
    assert "GET /" in err and "\x1b" not in err and "\x07" not in err
