"""The user guide stays true to the code: README.md and docs/*.md link only to files (and headings) that exist, every
`python main.py <command> ...` shown in a fenced code block names a real subcommand with flags, presets and config
fields that exist, every `python some/script.py` shown exists, and README.md stays short enough to read in ten
minutes. Each checker returns a list of problems; the last tests plant a fault in each to show it is reported."""
from __future__ import annotations

import argparse
import functools
import os
import re
import shlex
import urllib.parse
from pathlib import Path

import pytest

import config
import main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_LINES = 300
LAUNCHERS = {"python", "python3", "torchrun"}  # what may run main.py in a shown command
SHELL_ENDS = {"|", "||", "&&", ";", "&", ">", ">>", "2>&1", "2>", "<"}


def doc_files() -> list[Path]:
    return [README] + sorted((ROOT / "docs").glob("*.md"))


def rel(path: Path) -> str:
    return os.path.relpath(path, ROOT)


# ---------------------------------------------------------------------------------------------- markdown structure

def split_markdown(text: str) -> tuple[str, list[tuple[int, list[str]]]]:
    """(the prose with fenced code blanked out, line numbers kept; [(first line number, code lines)] per block)."""
    prose, blocks, fence, block = [], [], None, None
    for number, line in enumerate(text.split("\n"), 1):
        opener = re.match(r"^\s*(`{3,}|~{3,})", line)
        if fence is None and opener:
            fence, block = opener.group(1), (number + 1, [])
            prose.append("")
        elif fence is not None and line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
            blocks.append(block)
            fence = None
            prose.append("")
        elif fence is not None:
            block[1].append(line)
            prose.append("")
        else:
            prose.append(line)
    if fence is not None:  # an unclosed fence: its lines are code to the end
        blocks.append(block)
    return "\n".join(prose), blocks


def without_inline_code(prose: str) -> str:
    """Inline code spans blanked (newlines kept), so `[x](y)` shown as code is not a link."""
    return re.sub(r"(`+)(.+?)\1", lambda m: "\n" * m.group(0).count("\n"), prose, flags=re.S)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    prose, _ = split_markdown(text)
    seen: dict[str, int] = {}
    out = set()
    for line in prose.split("\n"):
        m = re.match(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = github_slug(m.group(1))
            out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return out


LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'][^\"']*[\"'])?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
HTML_SRC = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=[\"']([^\"']+)[\"']", re.I)


def link_targets(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every markdown link, image, reference definition and HTML src/href outside code."""
    prose = without_inline_code(split_markdown(text)[0])
    found = []
    for pattern in (LINK, REFERENCE, HTML_SRC):
        for m in pattern.finditer(prose):
            found.append((prose.count("\n", 0, m.start(1)) + 1, m.group(1)))
    return sorted(found)


def check_links(md_path: Path, text: str) -> list[str]:
    """Every relative link of one markdown file names a file in the repository (and, for a .md file with #anchor, a
    heading of it). http(s):// and other schemes, and #anchor-only links, are not checked."""
    problems = []
    for line, target in link_targets(text):
        where = f"{rel(md_path)}:{line}: link '{target}'"
        if not target:
            problems.append(f"{where}: empty target")
            continue
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", target) or target.startswith("#") or target.startswith("//"):
            continue
        path_part, _, fragment = target.partition("#")
        path_part = urllib.parse.unquote(path_part.split("?", 1)[0])
        if path_part.startswith("/"):
            problems.append(f"{where}: absolute path (links must be relative to the file)")
            continue
        resolved = (md_path.parent / path_part).resolve()
        if resolved != ROOT and ROOT not in resolved.parents:
            problems.append(f"{where}: points outside the repository")
        elif not resolved.exists():
            problems.append(f"{where}: {rel(resolved)} does not exist")
        elif fragment and resolved.suffix == ".md" and resolved.is_file():
            if fragment not in anchors(resolved.read_text(encoding="utf-8")):
                problems.append(f"{where}: no heading '#{fragment}' in {rel(resolved)}")
    return problems


# ---------------------------------------------------------------------------------------------- shown commands

def logical_lines(code: list[str], first: int) -> list[tuple[int, str]]:
    """Code lines with `\\` continuations joined: (line number of the first, joined text)."""
    out, pending, start = [], "", first
    for number, line in enumerate(code, first):
        if not pending:
            start = number
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def is_placeholder(value: str) -> bool:
    """A value that stands for the reader's own: N, PATH, FILE.json, <exp>, ..."""
    return (value in ("", "...") or value.startswith("<") or bool(re.fullmatch(r"[A-Z][A-Z0-9_]*(\.[a-z]+)?", value)))


@functools.lru_cache(maxsize=1)
def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = main.build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("main.build_parser() has no subcommands")


ZERO_ARG = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
            argparse._AppendConstAction, argparse._CountAction, argparse._HelpAction, argparse._VersionAction)


def check_override(item: str) -> list[str]:
    """One `--set field=value`: the field exists in config.py (as apply_overrides resolves it) and the value parses."""
    if "=" not in item:
        return [f"--set '{item}' is not field=value"]
    key, value = (part.strip() for part in item.split("=", 1))
    if is_placeholder(key) or key in ("field", "section.field"):
        return []
    try:
        if is_placeholder(value):
            config.get_field(config.Config(), key)
        else:
            config.set_field(config.Config(), key, value)
    except config.ConfigError as e:
        return [f"--set {item}: {e}"]
    return []


def check_main_args(args: list[str]) -> list[str]:
    """The arguments after `main.py`: a real subcommand, only flags its parser defines (exact names), a value where
    one is needed, known choices (presets from config.PRESETS), config fields that exist, the required flags."""
    args = [a for a in args if a not in ("[", "]", "...")]
    if not args:
        return ["no subcommand"]
    commands = subcommands()
    command, rest = args[0], args[1:]
    if command not in commands:
        return [f"unknown subcommand '{command}' (main.py has: {', '.join(commands)})"]
    parser = commands[command]
    options = {opt: action for action in parser._actions for opt in action.option_strings}
    problems, used, i = [], set(), 0
    while i < len(rest):
        token = rest[i].strip("[]")
        i += 1
        if not token.startswith("-") or re.fullmatch(r"-\d.*", token):
            problems.append(f"{command}: unexpected argument '{token}'")
            continue
        name, has_value, inline = token.partition("=")
        action = options.get(name)
        if action is None:
            problems.append(f"{command}: unknown flag '{name}'")
            if not has_value and i < len(rest) and not rest[i].startswith("-"):
                i += 1  # its value, most likely: one report per bad flag
            continue
        used.add(action)
        values: list[str] = []
        if isinstance(action, ZERO_ARG):
            if has_value:
                problems.append(f"{command}: {name} takes no value")
            continue
        if has_value:
            values = [inline]
        elif action.nargs == "?":
            if i < len(rest) and not rest[i].startswith("-"):
                values, i = [rest[i].strip("[]")], i + 1
        elif action.nargs in ("*", "+") or isinstance(action.nargs, int):
            while i < len(rest) and not rest[i].startswith("-"):
                values.append(rest[i].strip("[]"))
                i += 1
        else:
            if i >= len(rest) or (rest[i].startswith("-") and not re.fullmatch(r"-\d.*", rest[i])):
                problems.append(f"{command}: {name} needs a value")
                continue
            values, i = [rest[i].strip("[]")], i + 1
        for value in values:
            if action.dest == "overrides":
                problems += [f"{command}: {p}" for p in check_override(value)]
            elif is_placeholder(value):
                continue
            elif action.dest == "preset" and value not in config.PRESETS:
                problems.append(f"{command}: --preset {value}: no such preset in config.PRESETS "
                                f"({', '.join(config.PRESETS)})")
            elif action.choices is not None and value not in action.choices:
                problems.append(f"{command}: {name} {value}: not one of {', '.join(map(str, action.choices))}")
    for action in parser._actions:
        if action.required and action.option_strings and action not in used:
            problems.append(f"{command}: missing required {'/'.join(action.option_strings)}")
    for group in parser._mutually_exclusive_groups:
        if group.required and not any(a in used for a in group._group_actions):
            problems.append(f"{command}: needs one of {' / '.join(a.option_strings[0] for a in group._group_actions)}")
    return problems


def check_command_line(line: str) -> list[str]:
    """One shell line: a `python X.py` names an existing script; a `... main.py ...` run by python or torchrun (after
    any `VAR=value` prefixes and launcher options) is checked by check_main_args. Lines without a launcher (a tree
    listing, plain output) are not shell and are skipped."""
    if not re.search(r"(^|[\s/])(python3?|torchrun)(\s|$)", line):
        return []
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as e:
        return [f"cannot split the line ({e})"]
    for end, token in enumerate(tokens):
        if token in SHELL_ENDS:
            tokens = tokens[:end]
            break
    problems = []
    for i, token in enumerate(tokens[:-1]):
        script = tokens[i + 1]
        if (os.path.basename(token) in ("python", "python3") and script.endswith(".py")
                and not script.startswith(("/", "<", "$")) and not (ROOT / script).is_file()):
            problems.append(f"script '{script}' does not exist")
    for i, token in enumerate(tokens):
        if os.path.basename(token) == "main.py" and any(os.path.basename(t) in LAUNCHERS for t in tokens[:i]):
            problems += check_main_args(tokens[i + 1:])
            break
    return problems


def check_commands(md_path: Path, text: str) -> list[str]:
    problems = []
    for first, code in split_markdown(text)[1]:
        for number, line in logical_lines(code, first):
            problems += [f"{rel(md_path)}:{number}: {p}  <- {line.strip()}" for p in check_command_line(line)]
    return problems


def check_readme_length(text: str) -> list[str]:
    lines = len(text.splitlines())
    return [f"README.md has {lines} lines (at most {README_MAX_LINES}: move detail into docs/)"] \
        if lines > README_MAX_LINES else []


# ---------------------------------------------------------------------------------------------- the real docs

@pytest.mark.parametrize("md", doc_files(), ids=rel)
def test_links_resolve(md):
    assert check_links(md, md.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("md", doc_files(), ids=rel)
def test_shown_commands_parse(md):
    assert check_commands(md, md.read_text(encoding="utf-8")) == []


def test_readme_is_short():
    assert check_readme_length(README.read_text(encoding="utf-8")) == []


def test_readme_shows_what_ci_runs():
    """README's test command is the one .ci/run runs."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = [line.strip() for line in ci.splitlines() if "pytest" in line and not line.strip().startswith("#")][-1]
    assert command in README.read_text(encoding="utf-8")


def test_docs_are_checked_at_all():
    """The checks see the docs' links and commands (a parser change that found none would pass vacuously)."""
    texts = {md: md.read_text(encoding="utf-8") for md in doc_files()}
    assert len(texts) > 5
    assert sum(len(link_targets(t)) for t in texts.values()) > 20
    shown = [line for t in texts.values() for first, code in split_markdown(t)[1]
             for _, line in logical_lines(code, first) if "main.py" in line]
    assert len(shown) > 20


# ---------------------------------------------------------------------------------------------- the checks can fail

def test_planted_bad_links_are_reported():
    md = ROOT / "docs" / "planted.md"
    text = ("# Title\n\nSee [gone](missing_file.md), ![img](nothere.png), [ok](demo.md), "
            "[web](https://example.com/x), [self](#title), [bad anchor](demo.md#no-such-heading),\n"
            "[up](../README.md#text2sign), [out](../../etc/passwd) and\n[ref]: also_missing.md\n\n"
            "```bash\necho [not a link](nowhere.md)\n```\n`[code](nowhere2.md)`\n")
    problems = check_links(md, text)
    reported = " ".join(problems)
    assert "missing_file.md" in reported and "nothere.png" in reported and "also_missing.md" in reported
    assert "no-such-heading" in reported and "outside the repository" in reported
    assert "nowhere" not in reported and "example.com" not in reported and "'demo.md'" not in reported
    assert "README.md#text2sign" not in reported
    assert len(problems) == 5, problems


def test_github_slugs():
    assert github_slug("Fifth round: batch size, learning rate and a cheaper up-path") == \
        "fifth-round-batch-size-learning-rate-and-a-cheaper-up-path"
    assert github_slug("GPU throughput (`benchmarks/bench_gpu.py`)") == "gpu-throughput-benchmarksbench_gpupy"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


@pytest.mark.parametrize("line, expected", [
    ("python main.py trian", "unknown subcommand 'trian'"),
    ("python main.py train --resum", "unknown flag '--resum'"),
    ("python main.py sample --text hi --checkpoint c.pt --guidence 2", "unknown flag '--guidence'"),
    ("python main.py sample --text hi", "needs one of --checkpoint / --model"),
    ("python main.py export --checkpoint c.pt", "missing required --out"),
    ("python main.py train --preset nope", "no such preset"),
    ("python main.py train --set train.no_such_field=1", "unknown config field 'train.no_such_field'"),
    ("python main.py train --set train.max_steps=lots", "bad value 'lots'"),
    ("python main.py prepare-data --from nowhere --videos v/ --out o/", "not one of"),
    ("python main.py export --checkpoint c.pt --out o --no-samples=1", "takes no value"),
    ("python main.py sample --text hi --model m --steps", "--steps needs a value"),
    ("python main.py train stray", "unexpected argument 'stray'"),
    ("CI=true OMP_NUM_THREADS=1 python main.py train --bogus 1", "unknown flag '--bogus'"),
    ("torchrun --standalone --nproc_per_node=8 main.py train --set model.nope=1", "unknown config field"),
    ("python benchmarks/no_such_script.py --x 1", "script 'benchmarks/no_such_script.py' does not exist"),
])
def test_planted_bad_commands_are_reported(line, expected):
    problems = check_command_line(line)
    assert any(expected in p for p in problems), problems


def test_planted_commands_in_a_fenced_block():
    """Continuations, env prefixes, placeholders and comments are read as the shell would; only the bad ones count."""
    text = ("```bash\n"
            "python main.py train --preset real --set data.data_dir=path/to/folder   # a comment --bogus\n"
            "python main.py prepare-data --from csv --manifest my.csv --videos clips/ --out signs/ \\\n"
            "    --video-col file [--start-col from --end-col to] [--delimiter ';']\n"
            "python main.py synth-data --out DIR [--num N] [--seed S]\n"
            "python main.py train --set model.arch=NAME --set FIELD=VALUE\n"
            "T2S_X=1 python main.py evaluate --checkpoint PATH \\\n"
            "    --not-a-flag 3\n"
            "python -m pytest -q\n"
            "```\n")
    problems = check_commands(ROOT / "docs" / "planted.md", text)
    assert len(problems) == 1 and "unknown flag '--not-a-flag'" in problems[0] and "planted.md:7:" in problems[0], \
        problems


def test_planted_long_readme_is_reported():
    assert check_readme_length("line\n" * README_MAX_LINES) == []
    assert check_readme_length("line\n" * (README_MAX_LINES + 1)) != []
