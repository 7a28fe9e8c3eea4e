"""Reading weight files safely: BasicSR `.pth` (pickle, weights only) and `.safetensors`.

Nothing here ever unpickles arbitrary objects: `torch.load(weights_only=True)` with no fallback,
and safetensors, which holds no code at all.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path

import torch

from hatstream.errors import HatstreamError

# BasicSR saves {'params': ..., 'params_ema': ...}; the EMA weights are what the papers report.
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat {name: tensor} dict on the CPU.

    Takes `params_ema` first, then `params`, then a bare state dict, and strips DataParallel's
    `module.` prefix. Raises HatstreamError naming the file for anything unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise HatstreamError(f"model file {path} does not exist")
    if path.stat().st_size == 0:
        raise HatstreamError(f"model file {path} is empty")
    with open(path, "rb") as f:
        head = f.read(16)
    if _looks_like_safetensors(head):
        obj = _read_safetensors(path)
    else:
        obj = _read_torch(path, head)
    return _unwrap(obj, path)


def state_digest(state: dict[str, torch.Tensor], h: "hashlib._Hash | None" = None) -> str:
    """sha256 of a state dict's names, shapes, dtypes and bytes: the same weights on any machine.

    `h`, when given, is a hash already fed with whatever else the digest should cover.
    """
    h = h or hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(repr((name, tuple(t.shape), str(t.dtype))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _looks_like_safetensors(head: bytes) -> bool:
    # 8-byte little-endian header length, then a JSON object.
    return len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise HatstreamError(f"model file {path} is not a readable safetensors file ({exc})") from None


def _read_torch(path: Path, head: bytes) -> object:
    is_zip = head.startswith(b"PK\x03\x04")
    is_legacy_pickle = head[:1] == b"\x80"
    if not (is_zip or is_legacy_pickle):
        raise HatstreamError(f"model file {path} is neither a PyTorch checkpoint (.pth) nor a .safetensors file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any global that is not a tensor type: code, custom classes.
        reason = str(exc).splitlines()[0] if str(exc) else "unsupported content"
        raise HatstreamError(
            f"model file {path} holds objects other than tensors and was refused, since loading it "
            f"could run code ({reason[:160]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HatstreamError(f"model file {path} is corrupt or truncated ({reason[:160]})") from None


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise HatstreamError(f"model file {path} holds a {type(obj).__name__}, expected a dict of tensors")
    for key in WRAPPER_KEYS:
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = {}
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue  # BasicSR stores e.g. 'iter' beside the weights; they are not weights
        state[name[len("module."):] if name.startswith("module.") else name] = value
    if not state:
        raise HatstreamError(f"model file {path} contains no tensors")
    return state
