"""Folder rules: where Text2Sign may write. One home for the checks every command runs on its output folders."""
from __future__ import annotations

import json
import os
import tempfile

from utils.atomic import atomic_write
from utils.errors import UserError


def unwritable_reason(folder: str) -> str | None:
    """None when `folder` can be created and a file written in it, else a one-line reason."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_check_"):
            pass
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    return None


def check_output_dirs(places: dict[str, str]) -> None:
    """places: config field or flag -> folder. The first that cannot be created and written is a one-line UserError."""
    for field, folder in places.items():
        why = unwritable_reason(folder)
        if why:
            raise UserError(f"{field}: cannot write in {folder} ({why}); point it at a writable folder")


OWNER_FILE = ".text2sign.json"  # the mark of a folder a Text2Sign command made: which command, and how it was run


def claim_output_folder(folder: str, kind: str, command: str, flag: str = "--out", legacy=None) -> None:
    """Make `folder` the output of `kind` (e.g. "export"), or refuse with one line before any work is done.

    A command writes only into a folder that is new, empty, or marked by an earlier run of the same command (it
    resumes or refreshes its own output), so it never replaces or deletes a file it did not write. `legacy(folder)`
    may recognise that command's output from before folders were marked; the mark is then added.
    """
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{flag} {folder} is a file, not a folder: name a new or empty folder")
    owner = read_owner(folder)
    mine = owner is not None and owner.get("kind") == kind
    try:
        holds_files = os.path.isdir(folder) and bool(os.listdir(folder))
    except OSError as err:
        raise UserError(f"{flag} {folder} cannot be read ({type(err).__name__}: {err.strerror or err})") from None
    if holds_files and not mine and not (owner is None and legacy and legacy(folder)):
        made_by = f" (it holds the output of `{owner['kind']}`)" if owner else ""
        raise UserError(f"{flag} {folder} is not empty and was not made by `python main.py {kind}`{made_by}: name a "
                        f"new or empty folder, so no file of yours is replaced")
    check_output_dirs({flag: folder})
    if not mine:
        with atomic_write(os.path.join(folder, OWNER_FILE), "w") as f:
            json.dump({"tool": "text2sign", "kind": kind, "command": command}, f, indent=1)
            f.write("\n")


def read_owner(folder: str) -> dict | None:
    """The mark claim_output_folder left in `folder`, or None (no mark, or not one of ours)."""
    try:
        with open(os.path.join(folder, OWNER_FILE), encoding="utf-8") as f:
            owner = json.loads(f.read(4096))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return owner if isinstance(owner, dict) and owner.get("tool") == "text2sign" and "kind" in owner else None
