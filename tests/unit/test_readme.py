"""The README tells the truth about the command line: every `music-gen ...` it shows
(in code blocks and inline) names a subcommand that exists, whose `--help` works, with
flags that subcommand accepts, config keys the schema has and config files that exist;
every `make X` it names is a Makefile target. All in-process through the CLI's own
parser: seconds, no subprocesses."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from music_gen.cli import build_parser, split_overrides
from music_gen.config import load_config
from music_gen.errors import ConfigError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SEPARATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "(", ")"}
REDIRECTS = {">", ">>", "<"}
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def shell_snippets(text: str) -> list[str]:
    """Lines of the shell code blocks (continuations joined) and the inline code spans."""
    snippets = []
    for lang, body in FENCE.findall(text):
        if lang in ("bash", "sh", "shell", ""):
            snippets += body.replace("\\\n", " ").splitlines()
    prose = FENCE.sub("", text)
    snippets += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
    return snippets


def words(snippet: str) -> list[str]:
    lexer = shlex.shlex(snippet, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True  # flags and paths stay whole words
    try:
        return list(lexer)
    except ValueError:  # an unbalanced quote: prose, not a command
        return []


def invocations(text: str) -> list[list[str]]:
    """The arguments of every `music-gen ...` command in ``text`` (with the ones a `submit`
    carries after its `--`)."""
    found = []
    for snippet in shell_snippets(text):
        command: list[str] = []
        redirect = False
        for word in [*words(snippet), ";"]:
            if word not in SEPARATORS:
                if not redirect:  # the word after `<` or `>` is a file, not the command
                    command.append(word)
                redirect = False
                continue
            redirect = word in REDIRECTS
            while command and ENV_ASSIGNMENT.match(command[0]):
                command.pop(0)
            if len(command) > 1 and command[0] == "music-gen":
                found.append(command[1:])
            command = []
    for args in list(found):
        if args[0] == "submit" and "--" in args:
            found.append(args[args.index("--") + 1 :])
    return found


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def command_path(args: list[str]) -> tuple[list[str], argparse.ArgumentParser]:
    """The subcommand words at the front of ``args`` and the parser they lead to."""
    parser, path = build_parser(), []
    for word in args:
        choices = subparsers(parser)
        if word not in choices:
            break
        parser = choices[word]
        path.append(word)
    return path, parser


def leaf_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> set[tuple]:
    choices = subparsers(parser)
    if not choices:
        return {path}
    found = set()
    for name, child in choices.items():
        found |= leaf_paths(child, (*path, name))
    if not any(action.required for action in parser._actions if action.choices == choices):
        found.add(path)  # the group runs on its own too (`serve`)
    return found - {()}


def parse(args: list[str]) -> tuple[int, str]:
    """``build_parser().parse_args(args)``: (exit code, what it printed); 0 when it parsed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            build_parser().parse_args(args)
        except SystemExit as exc:
            return int(exc.code or 0), out.getvalue()
    return 0, out.getvalue()


README_TEXT = README.read_text()
INVOCATIONS = invocations(README_TEXT)
SHOWN = [" ".join(shlex.quote(word) for word in args) for args in INVOCATIONS]


def test_the_readme_shows_commands():
    assert len(INVOCATIONS) > 30, SHOWN  # the extraction found the README's examples


@pytest.mark.parametrize("args", INVOCATIONS, ids=SHOWN)
def test_each_command_the_readme_shows_exists_and_parses(args):
    shown = "music-gen " + " ".join(args)
    rest, overrides = split_overrides(args)
    path, parser = command_path(rest)
    assert path, f"README shows `{shown}`: there is no subcommand '{rest[0]}'"
    end = rest.index("--") if "--" in rest else len(rest)
    unknown = [
        word.split("=", 1)[0]
        for word in rest[len(path) : end]
        if word.startswith("-") and word.split("=", 1)[0] not in parser._option_string_actions
    ]
    assert not unknown, f"README shows `{shown}`: `music-gen {' '.join(path)}` has no {unknown}"
    if overrides:
        assert parser.get_default("takes_overrides"), (
            f"README shows `{shown}`: `music-gen {' '.join(path)}` takes no config overrides"
        )
        try:
            load_config(overrides=overrides)
        except ConfigError as exc:  # an unknown key or a bad value
            pytest.fail(f"README shows `{shown}`: {exc}")
    code, said = parse([word for word in rest if word not in ("--help", "-h")])
    assert code == 0, f"README shows `{shown}`, which does not parse:\n{said}"


@pytest.mark.parametrize(
    "path", sorted({tuple(command_path(args)[0]) for args in INVOCATIONS}), ids=" ".join
)
def test_help_of_each_command_the_readme_shows_exits_0(path):
    for depth in range(1, len(path) + 1):
        code, said = parse([*path[:depth], "--help"])
        assert code == 0 and said.startswith("usage: music-gen"), said


def test_every_command_is_shown_in_the_readme():
    shown = {tuple(command_path(args)[0]) for args in INVOCATIONS}
    missing = sorted(" ".join(path) for path in leaf_paths(build_parser()) - shown)
    assert not missing, f"`music-gen {missing[0]}` is not in README.md (also: {missing[1:]})"


def test_config_files_the_readme_names_exist():
    named = set(re.findall(r"\bconfigs/[\w/.-]+\.ya?ml\b", README_TEXT))
    assert named
    missing = sorted(path for path in named if not (ROOT / path).is_file())
    assert not missing, f"README.md names config files that do not exist: {missing}"


def test_make_targets_the_readme_names_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", makefile, re.MULTILINE))
    named = set(re.findall(r"\bmake ([a-z][\w-]*)", README_TEXT))
    assert {"demo", "test", "setup"} <= named
    assert not named - targets, (
        f"README.md names make targets the Makefile lacks: {named - targets}"
    )
