"""The README and the documentation site: the README stays a short user's guide, the site in docs/ builds with
mkdocs --strict (a broken link fails), every link of the README resolves, and every `taalm` command the README or a
page shows is one the command line accepts (a whole command in a code block parses; a verb named inline exists, with
every flag it names)."""

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from taalm_dist.cli import BENCHES, build_parser

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "RESULTS.md", ROOT / "BENCHMARKS.md",
         *sorted(p for p in (ROOT / "docs").glob("*.md") if not p.is_symlink())]
README_LIMIT = 12 * 1024


_STARTS = r"(?:^\s*(?:[A-Z_]+=\S+\s+|nohup\s+|time\s+)*|(?:;|&&|\|\||\$\(|\bdo|\bthen)\s+)"
"""Where a command starts on a line: its beginning (after environment assignments, ``nohup``, ``time``), or after
``;``, ``&&``, ``||``, ``$(``, ``do``, ``then``."""


def _code_commands(text: str) -> list[str]:
    """Every `taalm ...` command in the fenced code blocks (continuation lines joined; cut at ; | & # or ``)``)."""
    out = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            out += [c.strip() for c in re.findall(_STARTS + r"(taalm\s[^;|&#)]*)", line)]
    return out


def _inline_commands(text: str) -> list[str]:
    """Every inline code span outside the code blocks that starts with ``taalm ``."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return [s for s in re.findall(r"`([^`\n]+)`", prose) if s.startswith("taalm ")]


def _placeholder(words: list[str]) -> bool:
    """A command with a placeholder (``...``, ``<method>``, ``finetune|oracle``, ``{a,b}``) is a pattern, not a
    command."""
    return any(re.search(r"\.\.\.|…|<\w+>|\||\{", w) for w in words)


def _verb_parser(parser: argparse.ArgumentParser, words: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The (sub)parser the leading verb words of ``words`` select, and the words after them."""
    while words:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or words[0] not in subs[0].choices:
            break
        parser, words = subs[0].choices[words[0]], words[1:]
    return parser, words


def test_the_readme_is_a_short_users_guide():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= README_LIMIT, f"README.md is {len(text.encode())} bytes (at most {README_LIMIT})"
    for heading in ("## Install", "## The two commands", "## What users do", "## Results", "## Documentation"):
        assert heading in text


def test_every_link_of_the_readme_resolves():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert links
    missing = [link for link in links if not link.startswith("http") and not (ROOT / link).exists()]
    assert not missing, missing


def test_every_command_shown_is_accepted_by_the_command_line():
    parser = build_parser()
    refused = []
    for page in PAGES:
        text = page.read_text()
        for cmd in _code_commands(text):
            words = shlex.split(cmd)[1:]
            if _placeholder(words):
                continue
            try:
                parser.parse_args(words)
            except SystemExit:
                refused.append(f"{page.name}: {cmd}")
        for cmd in _inline_commands(text):
            words = shlex.split(cmd.replace("|", " "))[1:]
            if _placeholder(words[:1]):
                continue
            if words[:1] == ["bench"]:  # a harness parses its own arguments: its name must exist
                if len(words) < 2 or words[1] not in BENCHES:
                    refused.append(f"{page.name}: `{cmd}` (no such bench)")
                continue
            sub, rest = _verb_parser(parser, words)
            known = {o for a in sub._actions for o in a.option_strings}
            unknown = [w.split("=")[0] for w in rest if w.startswith("--") and w.split("=")[0] not in known]
            if sub is parser or unknown:
                refused.append(f"{page.name}: `{cmd}` ({'no such verb' if sub is parser else unknown})")
    assert not refused, "\n".join(refused)


@pytest.mark.skipif(shutil.which("mkdocs") is None and not (Path(sys.executable).parent / "mkdocs").exists(),
                    reason="mkdocs is not installed (make install installs it)")
def test_the_site_builds_strictly_and_a_broken_link_fails_it(tmp_path):
    mkdocs = [sys.executable, "-m", "mkdocs", "build", "--strict"]
    ok = subprocess.run([*mkdocs, "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "results" / "index.html").is_file()
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "docs", copy / "docs", symlinks=False)
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    (copy / "docs" / "cli.md").write_text((copy / "docs" / "cli.md").read_text() + "\n[gone](no_such_page.md)\n")
    broken = subprocess.run([*mkdocs, "-d", str(tmp_path / "site2")], cwd=copy, capture_output=True, text=True)
    assert broken.returncode != 0 and "no_such_page.md" in broken.stderr
