"""The command line: every subcommand listed, errors as one line."""

import pytest

from rope_interp.cli import build_parser, main


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in (
        "bands",
        "summary",
        "usage",
        "heads",
        "sinks",
        "offsets",
        "massive",
        "spectrum",
        "sweep",
        "patch",
        "report",
    ):
        assert cmd in out, cmd
    assert "examples:" in out


def test_shared_options_on_every_subcommand():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        opts = {o for a in p._actions for o in a.option_strings}
        assert {"--model", "--text", "--device", "--dtype", "--out"} <= opts, name


def test_errors_are_one_line(capsys, tmp_path):
    assert main(["bands", "--model", str(tmp_path / "missing.gguf")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err and "Traceback" not in err
    empty = tmp_path / "empty.txt"
    empty.write_text("  ")
    assert main(["summary", "--text", str(empty), "--model", str(tmp_path / "missing.gguf")]) == 1
