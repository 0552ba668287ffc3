"""Every numeric setting has one range, read by the CLI and the API alike: no option can forget it."""

import argparse
import dataclasses

import numpy as np
import pytest

from mitoseg import checks, cli, predict
from mitoseg.config import Config
from mitoseg.errors import MitosegError
from mitoseg.postprocess import PostProcessing


def _options():
    """(command, option) for every option of every subcommand of `mitoseg`."""
    parser = cli.parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        for action in p._actions:
            yield name, action


def test_every_numeric_option_has_a_rule_and_help():
    numeric = 0
    for command, action in _options():
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"mitoseg {command} {action.option_strings or action.dest} has no help"
        if action.type is not None and action.choices is None:
            assert hasattr(action.type, "rule"), f"mitoseg {command} {action.option_strings}: type without a rule"
            numeric += 1
    assert numeric >= 25


def test_every_numeric_config_field_has_a_rule():
    numeric = [f.name for f in dataclasses.fields(Config) if f.name != "dims" and ("int" in str(f.type) or
                                                                                  "float" in str(f.type))]
    assert {"epochs", "minutes", "overlap", "voxel_size", "unlabeled"} <= set(numeric)
    for name in numeric:
        assert name in checks.RULES, f"Config.{name} has no rule in checks.RULES"


def test_rules_in_words_and_at_their_edges():
    assert checks.RULES["overlap"].words() == "a number in [0, 1)"
    assert checks.RULES["threshold"].words() == "a number in (0, 1)"
    assert checks.RULES["epochs"].words() == "an integer >= 1"
    ok, bad = checks.RULES["overlap"].ok, checks.RULES["epochs"].ok
    assert ok(0) and ok(0.99) and not ok(1) and not ok(-0.01) and not ok(float("nan")) and not ok(True)
    assert bad(1) is True and not bad(0) and not bad(1.5) and bad(np.int64(3))
    checks.check(voxel_size=(50, 4.6, 4.6), block=None)
    with pytest.raises(MitosegError, match=r"voxel_size must be a number >= 0.1, not -5"):
        checks.check(voxel_size=(5, -5, 5))
    with pytest.raises(MitosegError, match=r"not 0.05 \(voxel sizes are in nm: micrometres x 1000\)"):
        checks.check(voxel_size=(0.05, 0.0046, 0.0046))  # µm taken as nm: before, volumes 1e9 times too small
    with pytest.raises(MitosegError, match=r"^threshold must be a number > 0, not -1"):  # the keyword, not its rule
        checks.check(value_threshold=-1)  # label_volume's and evaluate's (before: "value-threshold")
    with pytest.raises(KeyError):
        checks.check(no_such_setting=1)  # a setting without a rule is a bug, not a pass


@pytest.mark.parametrize("make, match", [
    (lambda: Config(epochs=0), "epochs must be an integer >= 1, not 0"),
    (lambda: Config(overlap=1.5), r"overlap must be a number in \[0, 1\), not 1.5"),
    (lambda: Config(voxel_size=(5, 5)), "three numbers"),
    (lambda: Config(val_fraction=0.95), r"val_fraction must be a number in \[0, 0.9\]"),
    (lambda: PostProcessing(threshold=128), r"threshold must be a number in \(0, 1\), not 128"),
    (lambda: PostProcessing(min_size=-5), "min_size must be an integer >= 0, not -5"),
    (lambda: predict.Settings((1, 64, 64), -0.5, (0.0, 1.0), (4, 64, 64)), "overlap must be"),
    (lambda: predict.Settings((1, 64, 64), 0.5, (0.0, 1.0), (4, 64, 64), batch_size=0), "batch_size must be"),
])
def test_the_api_refuses_what_the_cli_refuses(make, match):
    with pytest.raises(MitosegError, match=match):
        make()


def test_parse_errors_are_one_line(capsys):
    assert cli.main(["predict", "x", "--model", "m", "--out", "o", "--overlap", "abc"]) == 2
    err = capsys.readouterr().err
    assert err == "mitoseg predict: error: argument --overlap: must be a number in [0, 1), not 'abc' " \
                  "(see mitoseg predict --help)\n"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("mitoseg 0.")


def test_a_voxel_size_or_block_needs_one_number_per_axis():
    checks.per_axis(voxel_size=(50, 4.6, 4.6), block=[64, 512, 512])
    for value in ((5, 5), 5, (1, 2, 3, 4)):
        with pytest.raises(MitosegError, match=r"voxel_size must be three numbers \(z, y, x\)"):
            checks.per_axis(voxel_size=value)
