"""Where the network runs: torch (the reference path), or a static graph in ONNX Runtime or OpenVINO.

On a CPU, the exported graph (`hatstream.models.export`) runs several times faster in the graph
runtimes than the same network in eager torch (benchmarks/RESULTS.md): they fuse the window
attention's ops, fold the biases into constants and plan their memory once for the fixed shapes.
The price is one export per input size, so `GraphForward` exports lazily, the first time it
sees a size, keeps the compiled graph for that size in memory, and keeps the ONNX file in the
user's cache folder for the next process (`graph_cache_dir`).

How static shapes meet the upscaler:
- sizes: the upscaler pads every frame (or tile) to the window multiple before it calls the
  network, so one graph serves every frame size that pads to the same size; a video has one.
- tiles: the tiling fallback cuts tiles of one size (the last row and column are flush with
  the edge, not smaller), so a tiled frame adds one graph, for the padded tile size.
- batch: graphs are exported for one frame, and a batch runs frame by frame through that one
  graph. On a CPU a batch buys no speed, and a short last batch would need a graph of its own.

Precision: graphs are fp32, and on a CPU with native bf16 OpenVINO also runs them in bf16 with
the trunk, LayerNorms and ends kept fp32 (`inference/mixed_graph.py`): 1.7-2x faster than its fp32
on HAT-S (AVX512-BF16, benchmarks/RESULTS.md) at 57 dB from fp32. ONNX Runtime runs fp32 only.

Every new graph is checked once against torch fp32 on the first input it gets (the same padded
frame through both): under 50 dB PSNR, `auto` falls back to torch for that size with a warning.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
from pathlib import Path

import torch
from torch import nn

from hatstream.errors import HatstreamError
from hatstream.inference.precision import DTYPES, cpu_has_native_bf16
from hatstream.models.checkpoint import state_digest

log = logging.getLogger(__name__)
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
# Fastest first, as measured side by side on CPUs (benchmarks/RESULTS.md): `auto` takes the first installed.
GRAPH_BACKENDS = ("openvino", "onnxruntime")
BACKEND_ENV = "HATSTREAM_BACKEND"  # the backend when none is passed (`hatstream run` sets it for its workers)
CACHE_ENV = "HATSTREAM_CACHE_DIR"
MIN_PSNR_DB = 50.0  # a graph's output against torch fp32, on the same input
_CACHE_FORMAT = 2  # bump when what a cached graph contains changes (2: unclamped output)


def backend_installed(backend: str) -> bool:
    """Whether `backend` can run here: torch always; a graph runtime needs its package and the exporter's."""
    if backend == "torch":
        return True
    modules = ("onnx", backend)  # the TorchScript exporter writes ONNX through the onnx package
    try:
        return all(importlib.util.find_spec(m) is not None for m in modules)
    except (ImportError, ValueError):  # a broken or half-removed install
        return False


def graph_dtypes(backend: str) -> tuple[torch.dtype, ...]:
    """The precisions graph runtime `backend` runs here: fp32, and bf16 in OpenVINO where the CPU
    has it natively (elsewhere OpenVINO would emulate it, slower than fp32)."""
    if backend == "openvino" and cpu_has_native_bf16():
        return torch.float32, torch.bfloat16
    return (torch.float32,)


def default_backend() -> str:
    """The backend asked for by HATSTREAM_BACKEND, or 'auto'."""
    return os.environ.get(BACKEND_ENV, "") or "auto"


def resolve_backend(backend: str | None, model: nn.Module, device: torch.device, dtype: torch.dtype,
                    compile: bool = False) -> str:
    """The backend that runs `model`: 'torch', 'onnxruntime' or 'openvino'.

    `auto` takes the fastest installed graph runtime where one applies (a HAT, on the CPU, in a
    precision the runtime runs (`graph_dtypes`), not torch.compile'd) and torch everywhere else.
    A graph runtime asked for by name where it cannot run is a HatstreamError, one line.
    """
    from hatstream.models.chain import HATChain
    from hatstream.models.hat import HAT

    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise HatstreamError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return backend
    applies = isinstance(model, (HAT, HATChain)) and device.type == "cpu" and not compile
    if backend == "auto":
        if not applies:
            return "torch"
        return next((b for b in GRAPH_BACKENDS if backend_installed(b) and dtype in graph_dtypes(b)), "torch")
    if not isinstance(model, (HAT, HATChain)):
        raise HatstreamError(f"--backend {backend} runs HAT models only; use --backend torch for this model")
    if device.type != "cpu":
        raise HatstreamError(f"--backend {backend} runs on the CPU; use --device cpu, or --backend torch on {device}")
    if dtype not in graph_dtypes(backend):
        runs = " and ".join(DTYPE_NAMES[d] for d in graph_dtypes(backend))
        raise HatstreamError(f"--backend {backend} runs {runs} graphs here; use --precision fp32 (or auto), "
                             f"or --backend torch for {DTYPE_NAMES.get(dtype, dtype)}")
    if compile:
        raise HatstreamError(f"--compile is for --backend torch; --backend {backend} compiles its own graph")
    if not backend_installed(backend):
        package = "onnx onnxruntime" if backend == "onnxruntime" else "onnx openvino"
        raise HatstreamError(f"--backend {backend} needs {package} installed: pip install {package} "
                             f"(or 'hatstream[export]' for onnxruntime)")
    return backend


def graph_cache_dir() -> Path:
    """Where exported graphs are kept between runs: $HATSTREAM_CACHE_DIR, else hatstream/graphs in
    the user's cache folder ($XDG_CACHE_HOME, else ~/.cache)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser() / "graphs"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hatstream" / "graphs"


def sweep_stale(cache_dir: Path) -> int:
    """Remove what killed exports left in the graph cache, once untouched for an hour
    (`atomic.STALE_SECONDS`): `atomic_output`'s hidden `.part` files of any graph (a HAT-S graph is
    ~100 MB) and the `.mixed-*` scratch folders of the bf16 IR. Returns the count."""
    from hatstream.atomic import remove_stale

    try:
        entries = list(Path(cache_dir).iterdir())
    except OSError:
        return 0
    return sum(remove_stale(p) for p in entries
               if p.name.startswith(".mixed-") or (p.name.startswith(".") and ".part." in p.name))


def model_fingerprint(model: nn.Module) -> str:
    """A hash of what the graph is made of: the architecture's settings, every weight and buffer,
    and the versions that shape the export (hatstream's cache format, torch)."""
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    h.update(repr((type(model).__name__, config, _CACHE_FORMAT, torch.__version__)).encode())
    return state_digest(model.state_dict(), h)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float().clamp(0, 1) - b.float().clamp(0, 1)).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-20))


class GraphForward:
    """`forward(x)`: (B, 3, H, W) fp32, H and W multiples of the window -> the network's output
    (B, 3, sH, sW), run by an exported graph of `model` in `backend` (see the module's notes).

    `model` is the upscaler's prepared fp32 HAT on the CPU; it stays the torch twin that every new
    graph is checked against, and the fallback for sizes whose graph is out of bounds. `strict`
    (a backend asked for by name) keeps such a graph with a warning instead of falling back.
    `dtype` is the graph's compute precision, one of `graph_dtypes(backend)`; its input and
    output stay fp32.
    """

    def __init__(self, model: nn.Module, backend: str, threads: int | None = None, strict: bool = False,
                 cache_dir: Path | None = None, dtype: torch.dtype = torch.float32):
        self.model = model
        self.backend = backend
        self.dtype = dtype
        self.threads = threads or torch.get_num_threads()
        self.strict = strict
        self.cache_dir = cache_dir if cache_dir is not None else graph_cache_dir()
        self._runners: dict[tuple[int, int], object] = {}  # (H, W) -> callable, or None for torch
        self._fingerprint: str | None = None
        self._verified: set[tuple[int, int]] = set()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2], x.shape[-1])
        if size not in self._runners:
            self._runners[size] = self._load(*size)
        run = self._runners[size]
        if run is None:
            return self.model(x)
        frames = x.float().cpu().contiguous()
        outs = [run(frames[i : i + 1]) for i in range(frames.shape[0])]
        y = outs[0] if len(outs) == 1 else torch.cat(outs)
        if size not in self._verified:
            self._verified.add(size)
            if not self._check(size, frames[:1], y[:1]):
                self._runners[size] = None
                return self.model(x)
        return y

    def _check(self, size: tuple[int, int], x: torch.Tensor, y: torch.Tensor) -> bool:
        """Compare the new graph with torch on this input; False if it is out of bounds (fall back)."""
        marker = self._paths(*size)[2]
        if marker.exists():
            return True  # checked when it was exported
        with torch.inference_mode():
            db = _psnr(y, self.model(x))
        if db < MIN_PSNR_DB:
            log.warning("the %s graph for %dx%d inputs is %.1f dB from torch (under %.0f dB): %s", self.backend,
                        size[1], size[0], db, MIN_PSNR_DB, "kept, as --backend asked" if self.strict
                        else "running that size in torch instead")
            return self.strict
        self._write_marker(marker, db)
        return True

    def _paths(self, h: int, w: int) -> tuple[Path, Path, Path]:
        """(the fp32 ONNX graph, the graph this precision runs, and its check marker) for (H, W)."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        stem = f"{type(self.model).__name__.lower()}-{w}x{h}-{{}}-{self._fingerprint[:20]}"
        onnx = self.cache_dir / (stem.format("fp32") + ".onnx")
        if self.dtype == torch.float32:
            return onnx, onnx, onnx.with_suffix(".checked.json")
        # bf16: OpenVINO's IR with the fp32 ops marked (mixed_graph.py), made from the fp32 ONNX.
        mixed = self.cache_dir / (stem.format("bf16mixed") + ".xml")
        return onnx, mixed, mixed.with_suffix(".checked.json")

    def _write_marker(self, marker: Path, db: float) -> None:
        from hatstream.atomic import atomic_output

        try:
            with atomic_output(marker, overwrite=True) as tmp:
                tmp.write_text(json.dumps({"psnr_db_vs_torch": round(db, 2), "fingerprint": self._fingerprint}) + "\n")
        except OSError as exc:  # a read-only cache costs a re-check next time, nothing more
            log.debug("could not record the check of %s: %s", marker, exc)

    def _load(self, h: int, w: int):
        """The runner for (H, W) inputs: from the disk cache, else exported now (and cached)."""
        onnx, path, _ = self._paths(h, w)
        if not path.exists():
            sweep_stale(self.cache_dir)
            if not onnx.exists():
                self._export(onnx, h, w)
            if path != onnx:
                self._write_mixed(onnx, path)
        else:
            log.info("using the cached %dx%d graph %s", w, h, path)
        return self._compile(path)

    def _export(self, path: Path, h: int, w: int) -> None:
        import time

        from hatstream.atomic import atomic_output
        from hatstream.models.export import export_onnx

        log.info("exporting a %dx%d graph for %s (once per input size; cached in %s)", w, h, self.backend,
                 self.cache_dir)
        t = time.monotonic()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(path, overwrite=True) as tmp:
                # Unclamped, as the module's output: tiles are blended before the upscaler clamps.
                export_onnx(self.model, tmp, w, h, exporter="torchscript", clamp=False)
        except OSError as exc:
            raise HatstreamError(f"cannot write the graph cache {path.parent}: {exc.strerror or exc}; "
                                 f"set {CACHE_ENV} to a writable folder, or use --backend torch") from exc
        log.info("exported %s in %.1f s", path.name, time.monotonic() - t)

    def _write_mixed(self, onnx: Path, xml: Path) -> None:
        """The bf16 IR (xml + bin) for OpenVINO from the fp32 ONNX graph, written whole or not at all:
        both files go to a scratch folder beside them, and the .xml, which says the pair is there,
        moves last."""
        import shutil
        import tempfile

        from hatstream.inference.mixed_graph import write_mixed_ir

        try:
            scratch = Path(tempfile.mkdtemp(prefix=".mixed-", dir=xml.parent))
        except OSError as exc:
            raise HatstreamError(f"cannot write the graph cache {xml.parent}: {exc.strerror or exc}; "
                                 f"set {CACHE_ENV} to a writable folder, or use --backend torch") from exc
        try:
            marked = write_mixed_ir(onnx, scratch / xml.name)
            os.replace(scratch / xml.with_suffix(".bin").name, xml.with_suffix(".bin"))
            os.replace(scratch / xml.name, xml)
            log.info("wrote %s: bf16, %d ops kept fp32", xml.name, marked)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _compile(self, path: Path):
        from hatstream.models.export import INPUT_NAME

        if self.backend == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = self.threads, 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            return lambda x: torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])
        import openvino as ov

        # Always explicit: OpenVINO picks bf16 by itself on AVX512-BF16/AMX CPUs, and would run an
        # fp32 graph in it unasked (and with the whole trunk in bf16: under the 50 dB bound).
        hint = "bf16" if self.dtype == torch.bfloat16 else "f32"
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": self.threads,
                                                              "INFERENCE_PRECISION_HINT": hint})
        request = compiled.create_infer_request()
        return lambda x: torch.from_numpy(request.infer({0: x.numpy()})[0].copy())
