"""Sweep and intervention specs: JSON round-trips that reproduce the result; the CLI's --spec and --mode."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from rope_interp.errors import ParameterError, UselessInterventionError
from rope_interp.model.fingerprint import fingerprint
from rope_interp.model.testing import tiny_layout_model
from rope_interp.sweep.metrics import loss_metric
from rope_interp.sweep.spec import InterventionSpec, SweepSpec
from rope_interp.sweep.tiers import exact_sweep

TOKENS = [[3, 1, 4, 1, 5, 9, 2, 6, 5, 3]]
CORRUPT = [[3, 1, 4, 1, 7, 9, 2, 8, 5, 3]]


@pytest.mark.parametrize(
    "spec",
    [
        SweepSpec(tokens=TOKENS, mode="scale_freq", params={"factor": 0.5}, bands=[0, 2], method="exact"),
        SweepSpec(tokens=TOKENS, mode="shift", params={"phase": [0.3] * 8}, per=["layer", "head", "band"]),
        SweepSpec(
            tokens=CORRUPT,
            clean_tokens=TOKENS,
            metric={"name": "logit_diff", "answer": 7, "wrong": 8},
            method="refine",
            options={"top": 3, "batch_size": 4},
        ),
        SweepSpec(tokens=TOKENS, mode="mean", method="qk_attribution", layers=[1], target="q"),
    ],
)
def test_sweep_spec_round_trips_through_json_and_reproduces_the_result(spec):
    model = tiny_layout_model("gqa")
    first = spec.run(model)
    text = json.dumps(first.extra["spec"])
    again = SweepSpec.from_json(text)
    assert again == replace(spec, model=fingerprint(model))  # the result's spec records the model
    second = again.run(model)
    torch.testing.assert_close(second.values, first.values, atol=1e-6, rtol=1e-6)
    assert second.dims == first.dims and second.coords == first.coords


def test_sweep_spec_is_the_same_sweep_as_the_function_call():
    model = tiny_layout_model("gptj")
    spec = SweepSpec(tokens=TOKENS, mode="no_rotation", layers=[0, 1], bands=[1, 3])
    want = exact_sweep(
        model, torch.tensor(TOKENS), loss_metric(torch.tensor(TOKENS)), mode="no_rotation", layers=[0, 1],
        bands=[1, 3], progress=False,
    )  # fmt: skip
    torch.testing.assert_close(spec.run(model).values, want.values)


def test_intervention_spec_builds_the_same_intervention():
    model = tiny_layout_model("gqa")
    spec = InterventionSpec.from_json(
        InterventionSpec(
            mode="shift", bands=[0, 1], layers=[1], heads=[0, 1, 2], params={"delta": 4}
        ).to_json()
    )
    t = torch.tensor(TOKENS)
    from rope_interp.intervene.ablate import ablate_bands

    with torch.no_grad():
        a = spec.build(model).run(t)
        b = ablate_bands(model, [0, 1], layers=[1], heads=[0, 1, 2], mode="shift", delta=4).run(t)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "d,err,match",
    [
        (
            {"spec": "SweepSpec", "tokens": TOKENS, "mode": "erase"},
            ParameterError,
            "unknown intervention mode",
        ),
        ({"spec": "SweepSpec", "tokens": TOKENS, "method": "fast"}, ParameterError, "unknown method"),
        ({"spec": "SweepSpec", "tokens": TOKENS, "colour": 1}, ParameterError, "unknown SweepSpec fields"),
        ({"spec": "SweepSpec", "tokens": TOKENS, "bands": [1.5]}, ParameterError, "integers"),
        ({"spec": "SweepSpec", "tokens": TOKENS, "per": ["band", "time"]}, ParameterError, "axes"),
        ({"spec": "SweepSpec", "tokens": TOKENS, "version": 9}, ParameterError, "version 9"),
        ({"spec": "InterventionSpec", "mode": "zero"}, ParameterError, "not a SweepSpec"),
        ({"spec": "SweepSpec", "tokens": TOKENS, "metric": {"name": "acc"}}, ParameterError, "metric"),
    ],
)
def test_bad_specs_are_refused(d, err, match):
    with pytest.raises(err, match=match):
        SweepSpec.from_dict(d)


def test_specs_refuse_what_cannot_be_run_or_saved():
    model = tiny_layout_model("gqa")
    with pytest.raises(UselessInterventionError):
        SweepSpec(tokens=TOKENS, mode="shift", params={"delta": 2}, target="qk").run(model)
    with pytest.raises(ParameterError, match="exactly one of"):
        SweepSpec(metric={"name": "loss"}).run(model)
    with pytest.raises(ParameterError, match="cannot be written into a spec"):
        InterventionSpec(mode="mean", params={"reference": torch.zeros(2, 2, 8, 2)}).to_dict()


def test_cli_sweep_mode_and_spec_rerun(tmp_path, monkeypatch, capsys):
    from rope_interp import cli

    model = tiny_layout_model("gqa")
    monkeypatch.setattr(cli.common, "load_from_args", lambda args: model)
    monkeypatch.setattr(cli.common, "tokens_from_args", lambda m, args: torch.tensor(TOKENS))
    out = tmp_path / "a"
    argv = ["sweep", "--mode", "scale_freq", "--factor", "2", "--bands", "0", "3", "--no-progress"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    saved = json.loads((out / "sweep.spec.json").read_text())
    assert saved["spec"]["mode"] == "scale_freq" and saved["spec"]["params"] == {"factor": 2.0}
    rerun = tmp_path / "b"
    assert (
        cli.main(["sweep", "--spec", str(out / "sweep.spec.json"), "--out", str(rerun), "--no-progress"]) == 0
    )
    again = json.loads((rerun / "sweep.spec.json").read_text())
    torch.testing.assert_close(torch.tensor(again["values"]), torch.tensor(saved["values"]))
    assert (rerun / "sweep.csv").is_file() and (rerun / "sweep.png").is_file()


def test_cli_refuses_bad_mode_parameters_before_loading(monkeypatch, tmp_path):
    from rope_interp import cli

    def boom(args):
        raise AssertionError("the model must not be loaded for a bad call")

    monkeypatch.setattr(cli.common, "load_from_args", boom)
    for argv in (
        ["sweep", "--mode", "shift", "--delta", "nan"],
        ["sweep", "--mode", "shift", "--delta", "3", "--target", "qk"],
        ["sweep", "--mode", "scale_freq", "--factor", "1"],
        ["sweep", "--batch-size", "0"],
        ["patch", "--clean", "a"],
    ):
        assert cli.main([*argv, "--out", str(tmp_path)]) != 0, argv


@pytest.mark.parametrize("version", [True, 1.0, "1"])
def test_spec_version_must_be_the_integer(version):
    d = SweepSpec(tokens=TOKENS, metric={"name": "loss"}).to_dict()
    d["version"] = version
    with pytest.raises(ParameterError, match="spec version must be an integer"):
        SweepSpec.from_dict(d)


def test_a_spec_built_with_a_tuple_per_round_trips():
    spec = SweepSpec(tokens=TOKENS, metric={"name": "loss"}, per=("layer", "head", "band"))
    back = SweepSpec.from_dict(spec.to_dict())
    assert back.per == ["layer", "head", "band"]
    assert SweepSpec.from_dict(back.to_dict()) == back


def test_cli_sweep_prints_where_its_files_are_and_takes_no_abbreviations(tmp_path, monkeypatch, capsys):
    from rope_interp import cli

    model = tiny_layout_model("gqa")
    monkeypatch.setattr(cli.common, "load_from_args", lambda args: model)
    monkeypatch.setattr(cli.common, "tokens_from_args", lambda m, args: torch.tensor(TOKENS))
    out = tmp_path / "a"
    capsys.readouterr()
    assert cli.main(["sweep", "--bands", "0", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'sweep.csv'}" in printed and ".partial" not in printed  # not the staging folder
    assert (out / "sweep.csv").is_file()
    with pytest.raises(SystemExit):  # `--mode` of `patch` would otherwise be read as --model
        cli.main(["patch", "--mode", "shift"])
    assert "unrecognized arguments: --mode shift" in capsys.readouterr().err


# ---- a spec records its model (issue 22, item 4) -------------------------------------------------------
def _recorded(model):
    return SweepSpec(tokens=TOKENS, mode="no_rotation", layers=[1]).run(model).extra["spec"]


def test_a_result_spec_records_the_model_and_replays_on_it():
    model = tiny_layout_model("gqa")
    d = _recorded(model)
    assert d["model"] == fingerprint(model) and set(d["model"]) == {
        "name", "config", "weights", "dtype", "transformer_lens", "transformers"
    }  # fmt: skip
    assert SweepSpec.from_dict(d).run(model).extra["spec"] == d  # the same model: replays, same record


@pytest.mark.parametrize(
    ("other", "field"),
    [
        (lambda m: tiny_layout_model("gptj"), "config"),  # another layout: another config
        (lambda m: _perturbed(m), "weights"),  # the same config, one weight moved
        (lambda m: _renamed(m), "name"),
        (lambda m: tiny_layout_model("gqa").to(torch.float64), "dtype"),
    ],
)
def test_replay_on_another_model_is_refused_naming_the_field(other, field):
    from rope_interp.errors import ReplayMismatchError

    model = tiny_layout_model("gqa")
    spec = SweepSpec.from_dict(_recorded(model))
    with pytest.raises(ReplayMismatchError, match=f"differs in its {field}"):
        spec.run(other(model))


def _perturbed(model):
    m = tiny_layout_model("gqa")
    with torch.no_grad():
        next(iter(m.parameters())).view(-1)[0] += 1.0  # the first element is always sampled
    return m


def _renamed(model):
    m = tiny_layout_model("gqa")
    m.cfg.model_name = "another-name"
    return m


def test_library_version_mismatch_warns_but_replays():
    model = tiny_layout_model("gqa")
    d = _recorded(model)
    d["model"]["transformer_lens"] = "0.0.1"
    with pytest.warns(UserWarning, match="made with transformer_lens 0.0.1"):
        SweepSpec.from_dict(d).run(model)


def test_a_spec_file_without_a_model_record_replays_with_a_warning(tmp_path):
    d = SweepSpec(tokens=TOKENS, mode="no_rotation").to_dict()
    assert d["model"] is None
    path = tmp_path / "old.spec.json"
    path.write_text(json.dumps(d))
    with pytest.warns(UserWarning, match="records no model"):
        spec = SweepSpec.from_file(path)
    assert spec.run(tiny_layout_model("gqa")).extra["spec"]["model"] is not None


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"options": {"source": [[1, 2]]}}, r"\['source'\] are not options of method 'exact'"),
        ({"method": "naive", "options": {"batch_size": 2}}, "not options of method 'naive'"),
        ({"options": {"progress": True}}, "not options"),
        ({"options": {"batch_size": 0}}, "batch_size"),
        ({"method": "refine", "options": {"estimate": "naive"}}, "estimate"),
        ({"options": [1]}, "must be an object"),
    ],
)
def test_options_are_checked_against_the_tier(extra, match):
    with pytest.raises(ParameterError, match=match):
        SweepSpec.from_dict({"tokens": TOKENS, **extra})


def test_an_ablation_spec_cannot_become_a_patch_sweep_through_options():
    d = SweepSpec(tokens=TOKENS, mode="zero").to_dict()
    d["options"] = {"source": CORRUPT}  # before: run as a patch sweep from CORRUPT, silently
    with pytest.raises(ParameterError, match="source"):
        SweepSpec.from_dict(d)
