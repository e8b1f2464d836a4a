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
        "induction",
        "frequency-entropy",
        "carrier",
        "harmonics",
        "alignment",
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
        shared = {"--model", "--text", "--max-tokens", "--device", "--dtype", "--out", "--no-progress"}
        assert shared | {"--traceback"} <= opts, name


def test_summary_and_bands_accept_no_progress():
    # issue 22 item 15: `summary --no-progress` was an argparse error
    for name in ("summary", "bands", "report", "sweep"):
        assert build_parser().parse_args([name, "--no-progress"]).no_progress is True


def test_errors_are_one_line(capsys, tmp_path):
    assert main(["bands", "--model", str(tmp_path / "missing.gguf")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err and "Traceback" not in err
    empty = tmp_path / "empty.txt"
    empty.write_text("  ")
    assert main(["summary", "--text", str(empty), "--model", str(tmp_path / "missing.gguf")]) == 1


# ---- help text and argument types -------------------------------------------------------------------------
def test_help_keeps_the_descriptions_case(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Frequency usage (Barbero et al.)" in out
    assert "theta*(L-1) < pi" in out
    assert "Massive values (Jin et al.)" in out


def test_choices_come_from_the_api_literal_types():
    from rope_interp.analyses.heads import Method
    from rope_interp.analyses.registry import literal_choices
    from rope_interp.analyses.spectral import Part

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    by_dest = lambda name: {a.dest: a for a in sub.choices[name]._actions}  # noqa: E731
    assert tuple(by_dest("heads")["method"].choices) == literal_choices(Method)
    assert tuple(by_dest("spectrum")["parts"].choices) == literal_choices(Part)


def _tiny_cli(monkeypatch, n_tokens=40):
    """Point the CLI's model and text loading at a tiny random model (no download, seconds)."""
    import torch

    from rope_interp.cli import commands
    from rope_interp.model.testing import tiny_model

    model = tiny_model()
    tokens = torch.randint(0, 50, (1, n_tokens), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(commands, "load_from_args", lambda args: model)
    monkeypatch.setattr(commands, "tokens_from_args", lambda m, args, windowed=False: tokens)
    return model, tokens


# ---- no silent truncation; --max-tokens validated first --------------------------------------------------
@pytest.mark.parametrize("bad", ["-5", "0", "1.5", "many"])
def test_max_tokens_must_be_a_positive_int(bad, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["report", "--max-tokens", bad, "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "--max-tokens" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing written, nothing loaded


@pytest.mark.slow
def test_long_text_is_never_cut_silently(smol, capsys, tmp_path):
    import argparse

    from rope_interp.cli.common import tokens_from_args
    from rope_interp.data import load_text

    long_text = tmp_path / "long.txt"
    long_text.write_text(load_text() + "\n" + load_text())
    n_text = smol.to_tokens(long_text.read_text(), truncate=False).shape[1]
    assert n_text > smol.cfg.n_ctx  # longer than the model's context
    args = argparse.Namespace(text=str(long_text), max_tokens=None)
    assert tokens_from_args(smol, args, windowed=True).shape[1] == n_text  # streamed commands keep it all
    capsys.readouterr()
    assert tokens_from_args(smol, args).shape[1] == smol.cfg.n_ctx
    err = capsys.readouterr().err
    assert f"{n_text} tokens" in err and "--max-tokens" in err
    args.max_tokens = 100
    assert tokens_from_args(smol, args, windowed=True).shape[1] == 100
    assert f"first 100 of the text's {n_text} tokens" in capsys.readouterr().err


# ---- summary streams in bounded memory -------------------------------------------------------------------
def test_band_share_streams_exactly():
    """Windows and query chunks add up to the one-shot decomposition (exact up to float32 rounding)."""
    import torch

    from rope_interp.cli.commands import band_share
    from rope_interp.model.testing import tiny_model
    from rope_interp.read.decompose import band_scores

    model = tiny_model()
    tokens = torch.randint(0, 50, (1, 48), generator=torch.Generator().manual_seed(2))
    for layer in (0, 1):
        direct = band_scores(model, tokens, layer).mean_abs().mean(0).double()
        direct = direct / direct.sum()
        torch.testing.assert_close(
            band_share(model, tokens, layer, window=None, chunk_size=5), direct, rtol=1e-5, atol=1e-7
        )
    whole = [band_share(model, w, 0, window=None) for w in (tokens[:, :24], tokens[:, 24:])]
    assert torch.isclose(
        band_share(model, tokens, 0, window=24, chunk_size=7), (whole[0] + whole[1]) / 2, rtol=1e-4
    ).all()


@pytest.mark.slow
def test_readme_summary_command_runs(smol, tmp_path, capsys, monkeypatch):
    import json

    from rope_interp.cli import commands

    monkeypatch.setattr(commands, "load_from_args", lambda args: smol)
    out = tmp_path / "s"
    rc = main(
        ["summary", "--layers", "0", "15", "29", "--max-tokens", "600", "--window", "300", "--out", str(out)]
    )
    assert rc == 0, capsys.readouterr().err
    saved = json.loads((out / "summary.json").read_text())
    assert [r["layer"] for r in saved["layers"]] == [0, 15, 29] and saved["tokens"] == 600
    for r in saved["layers"]:
        assert abs(sum(r["band_share"]) - 1) < 1e-9


@pytest.mark.slow
def test_bands_piped_shows_every_column(smol, capsys, monkeypatch):
    from rope_interp.cli import commands

    monkeypatch.setattr(commands, "load_from_args", lambda args: smol)
    assert main(["bands"]) == 0
    out = capsys.readouterr().out
    assert "theta_rad_per_token" in out and "wavelength_tokens" in out and "..." not in out


# ---- atomic outputs, --out validated first ---------------------------------------------------------------
def test_out_is_validated_before_loading(tmp_path, capsys):
    f = tmp_path / "a_file"
    f.write_text("x")
    assert main(["usage", "--out", str(f), "--model", str(tmp_path / "missing.gguf")]) == 1
    err = capsys.readouterr().err
    assert "--out" in err and "is a file" in err and "missing.gguf" not in err


def _old_report(folder):
    import json

    folder.mkdir()
    for name in ("report.html", "summary.json", "usage.csv", "band_spectra.csv"):
        (folder / name).write_text(f"old {name}")
    (folder / ".rope-interp-files.json").write_text(
        json.dumps(["band_spectra.csv", "report.html", "summary.json", "usage.csv"])
    )
    (folder / "my_notes.txt").write_text("mine")
    return {p.name: p.read_text() for p in folder.iterdir()}


def test_interrupted_report_leaves_the_old_one_intact(tmp_path, monkeypatch):
    from rope_interp.analyses import registry

    _tiny_cli(monkeypatch)
    before = _old_report(tmp_path / "r")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(registry, "run", interrupted)
    assert main(["report", "--out", str(tmp_path / "r"), "--no-progress"]) == 130
    assert {p.name: p.read_text() for p in (tmp_path / "r").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no staging folder left behind


def test_rerun_replaces_the_whole_report(tmp_path, monkeypatch):
    _tiny_cli(monkeypatch)
    _old_report(tmp_path / "r")
    rc = main(
        [
            "report",
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
            "--window",
            "40",
            "--sections",
            "bands",
            "usage",
        ]
    )
    assert rc == 0
    names = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert names == [
        ".rope-interp-complete",
        ".rope-interp-files.json",
        "bands.csv",
        "my_notes.txt",
        "report.html",
        "summary.json",
        "usage.csv",
    ]
    assert "old" not in (tmp_path / "r" / "report.html").read_text()
    assert (
        tmp_path / "r" / "my_notes.txt"
    ).read_text() == "mine"  # never touch files rope_interp did not write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_analysis_command_writes_tables_figure_and_summary(tmp_path, monkeypatch, capsys):
    import json

    _tiny_cli(monkeypatch)
    rc = main(["heads", "--out", str(tmp_path / "h"), "--no-progress", "--window", "40", "--ablate-k", "2"])
    assert rc == 0, capsys.readouterr().err
    assert {"positional_heads.csv", "heads.png", "heads.json"} <= {p.name for p in (tmp_path / "h").iterdir()}
    assert json.loads((tmp_path / "h" / "heads.json").read_text())["threshold"] == 0.5
    assert "Positional heads:" in capsys.readouterr().out
    assert main(["heads", "--threshold", "nan", "--out", str(tmp_path / "x")]) == 1
    assert "finite" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["heads", "--layers", "0", "0", "--out", str(tmp_path / "x")]) == 1
    assert "more than once" in capsys.readouterr().err


# ---- raw errors before the model loads (issue 22, items 4 and 8) -------------------------------------------
@pytest.fixture
def no_model(monkeypatch):
    """The model must not be loaded: a call that would load it fails the test."""
    import rope_interp.model.load as models

    def boom(*a, **k):
        raise AssertionError("the model was loaded before a bad option was refused")

    monkeypatch.setattr(models, "load_model", boom)


def _one_line_error(capsys, argv, match):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and "Traceback" not in err, err
    assert match in err, err
    return err


@pytest.mark.parametrize(
    ("cmd", "opt"),
    [("summary", "--layers"), ("usage", "--layers"), ("report", "--layers"), ("report", "--spectra-layers"),
     ("sweep", "--layers"), ("sweep", "--bands"), ("patch", "--bands")],
)  # fmt: skip
def test_empty_selection_is_refused_before_the_model_loads(no_model, capsys, tmp_path, cmd, opt):
    # before: sweep --bands (nothing) ran the sweep and died in a RuntimeError
    _one_line_error(capsys, [cmd, opt, "--out", str(tmp_path / "o")], f"{opt} was given without any value")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "mps", "tpu"])
def test_unavailable_device_is_a_one_line_error(no_model, capsys, monkeypatch, device):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU build, wherever this runs
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    _one_line_error(capsys, ["bands", "--device", device], "--device")


def test_load_model_refuses_an_unavailable_device_before_loading(monkeypatch):
    import torch

    from rope_interp.errors import ParameterError
    from rope_interp.model.load import load_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ParameterError, match="no usable CUDA"):
        load_model("/nonexistent/model.gguf", device="cuda")  # refused before the path is even looked at


def test_binary_text_file_is_a_one_line_error_naming_the_file(no_model, capsys, tmp_path):
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    err = _one_line_error(capsys, ["summary", "--text", str(binary)], "is not UTF-8 text")
    assert str(binary) in err
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"abc\x00def")
    _one_line_error(capsys, ["summary", "--text", str(nul)], "NUL bytes")


@pytest.mark.parametrize(
    "flags",
    [["--layers", "0"], ["--bands", "1"], ["--method", "exact"], ["--mode", "zero"], ["--per", "layer-band"],
     ["--delta", "3"], ["--text", "corpus"], ["--max-tokens", "5"]],
)  # fmt: skip
def test_spec_with_selection_flags_is_refused(no_model, capsys, tmp_path, flags):
    spec = tmp_path / "s.spec.json"
    spec.write_text('{"spec": "SweepSpec", "version": 1, "tokens": [[1, 2, 3]]}')
    # even a flag equal to its default: it would have been ignored silently
    _one_line_error(capsys, ["sweep", "--spec", str(spec), *flags], "--spec says what to run")


def test_bad_spec_fields_are_refused_before_the_model_loads(no_model, capsys, tmp_path):
    spec = tmp_path / "s.spec.json"
    for body, match in (
        ('{"tokens": [[1, 2], [3]]}', "rows of one non-zero length"),
        ('{"tokens": [[1, 2]], "options": {"source": [[1, 2]]}}', "not options of method"),
        ('{"tokens": [[1, 2]], "params": [1]}', "params"),
        ('{"tokens": [[1, -2]]}', "token id >= 0"),
    ):
        spec.write_text(body)
        _one_line_error(capsys, ["sweep", "--spec", str(spec)], match)


def test_cli_spec_replay_on_another_model_is_refused(monkeypatch, capsys, tmp_path):
    import torch

    from rope_interp import cli
    from rope_interp.model.testing import tiny_layout_model

    models = {"a": tiny_layout_model("gqa"), "b": tiny_layout_model("gptj")}
    monkeypatch.setattr(cli.common, "load_from_args", lambda args: models[args.model])
    monkeypatch.setattr(cli.common, "tokens_from_args", lambda m, args: torch.tensor([[3, 1, 4, 1, 5, 9]]))
    out = tmp_path / "a"
    assert main(["sweep", "--model", "a", "--bands", "0", "--no-progress", "--out", str(out)]) == 0
    spec = str(out / "sweep.spec.json")
    _one_line_error(capsys, ["sweep", "--model", "b", "--spec", spec, "--out", str(tmp_path / "b")], "config")
    assert not (tmp_path / "b").exists()
    assert main(["sweep", "--model", "a", "--spec", spec, "--out", str(tmp_path / "c"), "--no-progress"]) == 0
