"""atomic_write: all of a file or none of it, no temp file left behind, plain permissions."""
import json
import os
import stat

import numpy as np
import pytest
import torch

from methods.checkpoint import save_checkpoint
from utils.atomic import atomic_write
from utils.gif import write_gif


def test_success_replaces_the_file_with_default_permissions(tmp_path):
    path = tmp_path / "sub" / "x.bin"
    with atomic_write(str(path)) as f:
        f.write(b"abc")
    assert path.read_bytes() == b"abc" and os.listdir(path.parent) == ["x.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    with atomic_write(str(path), "w") as f:
        f.write("é\n")
    assert path.read_bytes() == "é\n".encode("utf-8")


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_a_failure_keeps_the_old_file_and_removes_the_temp_file(tmp_path, exc):
    path = tmp_path / "latest.pt"
    path.write_bytes(b"previous")
    with pytest.raises(exc):
        with atomic_write(str(path)) as f:
            f.write(b"half of a new")
            raise exc("disk full")
    assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["latest.pt"]
    with pytest.raises(RuntimeError):
        with atomic_write(str(tmp_path / "new.pt")) as f:
            raise RuntimeError
    assert os.listdir(tmp_path) == ["latest.pt"]  # a file that did not exist is not created


def test_every_writer_uses_it(tmp_path, monkeypatch):
    """Checkpoints, GIFs, the clip cache and the text-embedding cache all fail the same clean way."""
    from data.clip_store import ClipStore
    from models import text_encoder

    def exploding(obj, f, *args, **kwargs):  # torch.save(obj, f)
        f.write(b"partial")
        raise OSError("no space left on device")

    monkeypatch.setattr(torch, "save", exploding)
    with pytest.raises(OSError):
        save_checkpoint(str(tmp_path / "a.pt"), {"ema": {}})
    store_dir = tmp_path.parent / (tmp_path.name + "_store")  # its array file may keep unpublished bytes
    with monkeypatch.context() as m:
        def exploding_json(obj, f, **kwargs):
            f.write('{"partial')
            raise OSError("no space left on device")

        m.setattr(json, "dump", exploding_json)
        with pytest.raises(OSError):
            with ClipStore(str(store_dir), "s", (1, 2, 2, 3)) as store:
                store.add("h", np.zeros((1, 2, 2, 3), np.uint8), False)
    assert sorted(n for n in os.listdir(store.root) if not n.startswith("clips-")) == [".lock"]  # no index
    assert ClipStore(str(store_dir), "s", (1, 2, 2, 3)).row("h") is None  # nothing published is trusted
    monkeypatch.setattr("utils.gif.gif_bytes", lambda *a, **k: b"GIF89a")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("read-only")))
    with pytest.raises(OSError):
        write_gif(str(tmp_path / "g.gif"), np.zeros((2, 4, 4, 3), np.uint8))

    class Encoder:
        def __init__(self, *args):
            pass

        def encode(self, captions):
            return text_encoder.TextEmbeddings(torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool),
                                               torch.zeros(1, 3))

    monkeypatch.setattr(text_encoder, "FrozenTextEncoder", Encoder)
    with pytest.raises(OSError):
        text_encoder.embed_captions("x", 4, ["hello"], str(tmp_path / "text"))
    leftovers = [os.path.join(d, n) for d, _, names in os.walk(tmp_path) for n in names]
    assert leftovers == []
