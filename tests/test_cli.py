"""The command line's own behaviour: one-line usage errors, the model list."""

from __future__ import annotations

import json

from conftest import run_cli


def test_usage_errors_are_one_line():
    for args in (["run"], ["run", "x.mp4", "--batch", "0"], ["no-such-command"]):
        res = run_cli(*args)
        assert res.returncode == 2, args
        assert res.stderr.startswith("hatstream: error: ") and res.stderr.count("\n") == 1, res.stderr


def test_models_lists_the_builtins_and_defaults():
    res = run_cli("models", "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["bicubic"]["scales"] == "any"
    assert rows["hat-tiny-x2"]["status"] == "installed" and "x2" in rows["hat-tiny-x2"]["note"]
    assert rows["hat-tiny-x4"]["status"] == "installed" and "x4" in rows["hat-tiny-x4"]["note"]
