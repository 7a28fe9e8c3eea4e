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


def test_model_option_usage_errors_are_one_line(tmp_path):
    img = tmp_path / "x.png"
    img.write_bytes(b"not read: the usage error comes first")
    cases = [["image", img, "-o", tmp_path / "o.png", "--scale", "-1"],
             ["image", img, "-o", tmp_path / "o.png", "--scale", "0"],
             ["watch", tmp_path, "-o", tmp_path / "out", "--poll", "0"],
             ["eval", "--data", tmp_path, "--precision", "fp64"]]
    for command in (["run", "x.mp4"], ["image", img, "-o", tmp_path / "o.png"], ["bench"], ["preview", "x.mp4"],
                    ["eval", "--data", tmp_path], ["watch", tmp_path, "-o", tmp_path / "out"]):
        cases.append(command + ["--device", "foo"])
    for args in cases:
        res = run_cli(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert res.stderr.startswith("hatstream: error: ") and res.stderr.count("\n") == 1, (args, res.stderr)
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "out").exists()


def _parse(capsys, *argv) -> tuple[int, str, str]:
    """What the parser alone makes of `argv`, in this process: (exit status, stdout, stderr). The
    checks below are all about parsing, so they need no child process (each would import torch)."""
    from hatstream.cli import build_parser

    parser, _ = build_parser()
    try:
        parser.parse_args([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_option_lists_come_from_the_code_that_defines_them(monkeypatch, capsys):
    from hatstream.inference.precision import PRECISIONS
    from hatstream.media.decode import ON_ERROR
    from hatstream.train.config import TRAIN_PRESETS

    monkeypatch.setenv("COLUMNS", "1000")  # argparse would wrap hyphenated names at the hyphen
    for command in ("run", "image", "bench", "eval", "preview"):
        code, out, err = _parse(capsys, command, "--help")
        assert code == 0, err
        help_text = " ".join(out.split())
        assert all(p in help_text for p in PRECISIONS), (command, help_text)  # eval had lost fp16
    run_help = " ".join(_parse(capsys, "run", "--help")[1].split())
    assert all(mode in run_help for mode in ON_ERROR)
    train_help = " ".join(_parse(capsys, "train", "--help")[1].split())
    assert all(arch in train_help for arch in TRAIN_PRESETS), train_help
    res = run_cli("train", "--arch", "hat-huge", "--data", "x", "--out", "y")  # the real CLI, once
    assert res.returncode == 2 and "hat-tiny-plus" in res.stderr and res.stderr.count("\n") == 1


def test_building_the_parser_imports_neither_torch_nor_av():
    import subprocess
    import sys

    code = ("import sys; from hatstream.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'av', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_model_loading_command_validates_the_model_options_alike(tmp_path, monkeypatch, capsys):
    # eval-video took any --device and --precision (and offered no fp16), export and preview had
    # their own copies: each now refuses the same bad values as a one-line usage error.
    from hatstream.inference.precision import DTYPES, PRECISIONS

    monkeypatch.setenv("COLUMNS", "1000")
    img = tmp_path / "x.png"
    img.write_bytes(b"not read: the usage error comes first")
    commands = {"run": ["run", "x.mp4"], "image": ["image", img, "-o", tmp_path / "o.png"], "bench": ["bench"],
                "eval": ["eval", "--data", tmp_path], "eval-video": ["eval-video", "x.mp4"],
                "preview": ["preview", "x.mp4"], "export": ["export", "bicubic", "-o", tmp_path / "m.onnx",
                                                             "--size", "64x64"]}
    for name, command in commands.items():
        bad = [["--scale", "0"], ["--scale", "-1"], ["--precision", "fp64"]]
        if name != "export":  # an export is for another machine: it has no --device
            bad.append(["--device", "foo"])
        for extra in bad:
            code, _, err = _parse(capsys, *command, *extra)
            assert code == 2, (name, extra, err)
            assert err.startswith("hatstream: error: ") and err.count("\n") == 1, (name, err)
            assert f"argument {extra[0]}:" in err, (name, err)  # refused by the parser
        help_text = " ".join(_parse(capsys, name, "--help")[1].split())
        wanted = DTYPES if name == "export" else PRECISIONS
        assert all(p in help_text for p in wanted), (name, help_text)
    assert not list(tmp_path.glob("o.png")) and not list(tmp_path.glob("m.onnx"))
    res = run_cli(*commands["image"], "--scale", "-1")  # and the real CLI says the same, once
    assert res.returncode == 2 and res.stderr.startswith("hatstream: error: ") and "argument --scale:" in res.stderr, res.stderr


def test_export_checks_scale_against_the_model(tmp_path):
    res = run_cli("export", "hat-tiny-x2", "-o", tmp_path / "m.onnx", "--size", "32x32", "--scale", "4")
    assert res.returncode != 0 and res.stderr.count("\n") == 1 and "x2" in res.stderr, res.stderr
    assert not (tmp_path / "m.onnx").exists()
