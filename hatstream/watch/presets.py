"""Run presets for `hatstream watch`: `pipelines/<name>.toml`, and `hatstream.toml` folder overrides.

A preset names what `hatstream run` would be told on its command line: model, scale, precision,
batch, the output container and the encoder settings. Example (`pipelines/default.toml`):

    model = "default"
    scale = 2
    container = "mkv"        # optional; default keeps the input's container when it can be written
    [encode]
    codec = "libx264"
    crf = 18

A `hatstream.toml` in a watched subfolder changes the settings for the files in that folder and
below it. It may start from another named preset (`preset = "archive-lossless"`) and then override
any key. Folders are applied from the top of IN_DIR down, so the nearest file wins.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from hatstream.errors import HatstreamError
from hatstream.pipeline.options import CONTAINERS, ON_ERROR, PRECISIONS, EncodeSettings
from hatstream.pipeline.run import RunConfig

# Presets shipped beside the package in a source checkout (the systemd unit runs from one).
PRESET_DIR = Path(__file__).resolve().parents[2] / "pipelines"
FOLDER_FILE = "hatstream.toml"
DEFAULT_CONTAINER = ".mkv"  # for inputs (.avi, .ts, ...) whose container cannot be written

_CHOICES = {"precision": PRECISIONS, "on_error": ON_ERROR}
_TYPES = {"model": str, "scale": int, "precision": str, "batch": int, "container": str,
          "audio_codec": str, "subtitles": str, "on_error": str, "description": str}
_ENCODE_TYPES = {"codec": str, "crf": int, "preset": str, "pix_fmt": str}


@dataclass(frozen=True)
class Preset:
    """The run settings applied to every file a watcher takes (before folder overrides)."""

    name: str = "built-in"
    description: str = ""
    model: str | None = None
    scale: int | None = None
    precision: str = "auto"
    batch: int = 1
    container: str | None = None
    encode: EncodeSettings = field(default_factory=EncodeSettings)
    audio_codec: str = "copy"
    subtitles: str = "copy"
    on_error: str = "fail"

    def output_suffix(self, input_suffix: str) -> str:
        """The output extension: the preset's container, else the input's when writable, else .mkv."""
        if self.container:
            return self.container
        return input_suffix.lower() if input_suffix.lower() in CONTAINERS else DEFAULT_CONTAINER

    def run_config(self, input: Path, output: Path, overwrite: bool, **placement) -> RunConfig:
        """The RunConfig that `run_file` takes for one job with these settings; `placement` holds
        the watcher's device/engine/address/workers, which no preset sets."""
        return RunConfig(input=input, output=output, model=self.model, scale=self.scale, precision=self.precision,
                         batch=self.batch, encode=self.encode, audio_codec=self.audio_codec,
                         subtitles=self.subtitles, on_error=self.on_error, overwrite=overwrite, **placement)


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise HatstreamError(f"preset file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise HatstreamError(f"cannot read {path}: {exc}") from None


def _checked(table: dict, types: dict, source: str) -> dict:
    """`table` with every key known and of the right type; HatstreamError naming the file otherwise."""
    unknown = sorted(set(table) - set(types))
    if unknown:
        raise HatstreamError(f"{source}: unknown setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(types))}")
    for key, value in table.items():
        # bool is an int subclass in Python; `scale = true` is still a mistake.
        if not isinstance(value, types[key]) or isinstance(value, bool):
            raise HatstreamError(f"{source}: {key} must be a {types[key].__name__}, not {value!r}")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise HatstreamError(f"{source}: {key} must be one of {', '.join(_CHOICES[key])}, not {value!r}")
        if key in ("scale", "batch") and value < 1:
            raise HatstreamError(f"{source}: {key} must be at least 1")
    return table


def apply(preset: Preset, table: dict, source: str) -> Preset:
    """`preset` with the settings in `table` (a parsed preset or folder file) laid over it."""
    table = dict(table)
    encode = table.pop("encode", {})
    if not isinstance(encode, dict):
        raise HatstreamError(f"{source}: encode must be a table ([encode])")
    changes = _checked(table, _TYPES, source)
    if "container" in changes:
        suffix = "." + changes["container"].lower().lstrip(".")
        if suffix not in CONTAINERS:
            raise HatstreamError(f"{source}: container must be one of {', '.join(sorted(CONTAINERS))}")
        changes["container"] = suffix
    new_encode = dataclasses.replace(preset.encode, **_checked(encode, _ENCODE_TYPES, f"{source} [encode]"))
    return dataclasses.replace(preset, **changes, encode=new_encode)


def load_preset(name_or_file: str) -> Preset:
    """A named preset (`pipelines/<name>.toml`) or a preset file given by path.

    'default' with no `pipelines/default.toml` (an installed wheel) is the built-in defaults,
    the same as `hatstream run` with no options.
    """
    looks_like_path = name_or_file.endswith(".toml") or "/" in name_or_file
    path = Path(name_or_file).expanduser() if looks_like_path else PRESET_DIR / f"{name_or_file}.toml"
    if not looks_like_path and not path.exists():
        if name_or_file == "default":
            return Preset(name="default")
        known = sorted(p.stem for p in PRESET_DIR.glob("*.toml") if not p.stem.startswith("train-"))
        raise HatstreamError(f"there is no preset called {name_or_file!r}; "
                             f"known: {', '.join(known) or 'none'} (or give a .toml file)")
    name = path.stem
    return apply(Preset(name=name), _read_toml(path), str(path))


def _folder_model(value, folder: Path, roots: tuple[Path, ...], source: str):
    """A folder file's `model`: a built-in name, or a checkpoint inside one of `roots` (made absolute).

    Anyone who can drop a file into the watched folder can write a `hatstream.toml`, so it must
    not make the service load a checkpoint from anywhere else on the machine. A relative path is
    taken from the folder file's own folder; links are followed before the check.
    """
    from hatstream.models.registry import BUILTINS

    if not isinstance(value, str) or value in BUILTINS or value == "default":
        return value  # a wrong type is refused by `apply`, naming the file
    real = Path(os.path.realpath(folder / Path(value).expanduser()))
    if not any(real == root or root in real.parents for root in roots):
        raise HatstreamError(f"{source}: model must be a built-in ({', '.join(BUILTINS)}) or a checkpoint "
                             f"inside the watched folder or --model-dir, not {value!r}")
    return str(real)


def settings_for(base: Preset, in_dir: Path, rel: str, model_dirs: tuple[Path, ...] = ()) -> Preset:
    """The settings for the file `rel` under `in_dir`: `base`, then each `hatstream.toml` from the top down.

    A folder file may name another preset with `preset = "NAME"` (names only, not paths, so a
    file dropped into the watched folder cannot point the watcher at arbitrary files). For the
    same reason its `model` is a built-in name or a checkpoint under `in_dir` or `model_dirs`.
    """
    roots = tuple(Path(os.path.realpath(d)) for d in (in_dir, *model_dirs))
    settings = base
    folder = in_dir
    for part in ("", *Path(rel).parent.parts):
        folder = folder / part if part else folder
        path = folder / FOLDER_FILE
        if not path.is_file():
            continue
        table = _read_toml(path)
        if "preset" in table:
            name = table.pop("preset")
            if not isinstance(name, str) or "/" in name or name.endswith(".toml"):
                raise HatstreamError(f"{path}: preset must be the name of a preset in pipelines/, not {name!r}")
            settings = load_preset(name)
        if "model" in table:
            table["model"] = _folder_model(table["model"], folder, roots, str(path))
        settings = apply(settings, table, str(path))
    return settings
