"""`taalm_dist.cli`: how the process exits once a command returned."""

import os

import pytest

from taalm_dist import cli
from taalm_dist.engine import distributed as D


def test_a_process_without_a_process_group_exits_through_the_interpreter(monkeypatch):
    monkeypatch.setattr(os, "_exit", lambda code: pytest.fail("os._exit without a process group"))
    with pytest.raises(SystemExit) as e:
        cli.exit_process(3)
    assert e.value.code == 3


def test_a_process_that_left_its_process_group_flushes_and_exits_at_once(monkeypatch, capsys):
    exited = []

    def fake_exit(code):
        exited.append((code, capsys.readouterr().out))  # what was printed is out before the process ends
        raise SystemExit(code)

    monkeypatch.setattr(D, "_left_process_group", True)
    monkeypatch.setattr(os, "_exit", fake_exit)
    print("done: 3 φ updates", end="")
    with pytest.raises(SystemExit):
        cli.exit_process(75)
    assert exited == [(75, "done: 3 φ updates")]


def test_the_command_and_the_module_both_exit_through_exit_process(monkeypatch):
    monkeypatch.setattr(cli, "main", lambda argv=None: 0)
    seen = []
    monkeypatch.setattr(cli, "exit_process", seen.append)
    cli.entry()
    assert seen == [0]
    from importlib.metadata import entry_points

    [taalm] = [e for e in entry_points(group="console_scripts") if e.name == "taalm"]
    assert taalm.value == "taalm_dist.cli:entry"
