"""Loading checkpoints: every released layout, both file formats, and clear errors for bad files."""

from __future__ import annotations

import functools
import pickle

import pytest
import torch
from safetensors.torch import save_file

from conftest import released_layouts
from hatstream.errors import HatstreamError
from hatstream.inference import load_model
from hatstream.models.hat import HAT, relative_position_index_oca, relative_position_index_sa

LAYOUTS = released_layouts()


@functools.lru_cache(maxsize=None)
def _base_pattern(n: int) -> torch.Tensor:
    return (torch.arange(n) % 97).float() * 1e-4


def _pattern(n: int) -> torch.Tensor:
    return _base_pattern(1 << max(n - 1, 1).bit_length())[:n]


def random_checkpoint(layout: dict) -> dict[str, torch.Tensor]:
    """Random tensors in exactly the released key layout; index buffers recomputed."""
    cfg = layout["config"]
    ws = cfg["window_size"]
    state = {}
    for i, (key, (shape, dtype)) in enumerate(layout["keys"].items()):
        if key == "relative_position_index_SA":
            state[key] = relative_position_index_sa(ws)
        elif key == "relative_position_index_OCA":
            state[key] = relative_position_index_oca(ws, ws + int(cfg["overlap_ratio"] * ws))
        else:
            # Cheap but distinct per tensor, so a tensor loaded under the wrong name would show.
            n = torch.Size(shape).numel()
            state[key] = (_pattern(n) + i * 1e-3).to(getattr(torch, dtype)).view(shape)
    return state


def assert_config_inferred(upscaler, layout):
    hp = upscaler.info.hyperparameters
    for key, value in layout["config"].items():
        assert hp[key] == value, (key, hp[key], value)
    assert upscaler.info.parameters == layout["params"]


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_released_layout_loads_strictly_and_infers_config(name, fmt, tmp_path):
    layout = LAYOUTS[name]
    state = random_checkpoint(layout)
    path = tmp_path / f"{name}.{fmt}"
    if fmt == "pth":
        torch.save({"params_ema": state, "params": state}, path)
    else:
        save_file(state, str(path))
    up = load_model(path, device="cpu", precision="fp32")
    assert_config_inferred(up, layout)
    assert up.info.name == name.split("_")[0]
    assert up.scale == layout["config"]["upscale"]
    # Strict both ways: our state dict has exactly the released keys and shapes.
    ours = up.model.state_dict()
    assert {k: list(v.shape) for k, v in ours.items()} == {k: s for k, (s, _) in layout["keys"].items()}


def test_params_used_when_no_ema_and_module_prefix_stripped(tmp_path):
    model = HAT(upscale=2, window_size=8, embed_dim=12, depths=[1], num_heads=[2], compress_ratio=3,
                squeeze_factor=4, mlp_ratio=2)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"params": state}, tmp_path / "p.pth")
    up = load_model(tmp_path / "p.pth", precision="fp32")
    assert torch.equal(up.model.conv_first.weight, model.conv_first.weight)
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    assert load_model(tmp_path / "bare.pth", precision="fp32").scale == 2


def expect_error(path, *needles):
    with pytest.raises(HatstreamError) as err:
        load_model(path, device="cpu", precision="fp32")
    message = str(err.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, message
    return message


def test_random_file(tmp_path):
    path = tmp_path / "random.pth"
    path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    expect_error(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    expect_error(path, "empty")


def test_truncated_pth(tmp_path):
    layout = LAYOUTS["HAT-S_SRx2"]
    full = tmp_path / "full.pth"
    torch.save({"params_ema": random_checkpoint(layout)}, full)
    data = full.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, "corrupt or truncated")


def test_truncated_safetensors(tmp_path):
    model = HAT(upscale=2, window_size=8, embed_dim=12, depths=[1], num_heads=[2], squeeze_factor=4)
    full = tmp_path / "full.safetensors"
    save_file(model.state_dict(), str(full))
    path = tmp_path / "cut.safetensors"
    path.write_bytes(full.read_bytes()[:-100])
    expect_error(path, "safetensors")


def test_state_dict_of_another_network(tmp_path):
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3))
    path = tmp_path / "other.pth"
    torch.save({"params_ema": other.state_dict()}, path)
    expect_error(path, "not a HAT or HAT-chain checkpoint")


def test_hat_with_missing_and_wrong_tensors(tmp_path):
    state = random_checkpoint(LAYOUTS["HAT-S_SRx2"])
    del state["layers.2.residual_group.blocks.3.mlp.fc2.bias"]
    torch.save(state, tmp_path / "missing.pth")
    expect_error(tmp_path / "missing.pth", "missing", "layers.2.residual_group.blocks.3.mlp.fc2.bias")
    state = random_checkpoint(LAYOUTS["HAT-S_SRx2"])
    state["conv_after_body.weight"] = torch.zeros(144, 144, 1, 1)
    torch.save(state, tmp_path / "shape.pth")
    expect_error(tmp_path / "shape.pth", "conv_after_body.weight")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_would_execute_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(1)}, "payload": _RunsCode(str(marker))}, path)
    expect_error(path, "refused")
    assert not marker.exists()
    # A legacy (non-zip) pickle stream with the same payload is refused too.
    legacy = tmp_path / "evil_legacy.pth"
    legacy.write_bytes(pickle.dumps({"payload": _RunsCode(str(marker))}, protocol=2))
    expect_error(legacy)
    assert not marker.exists()


def test_unknown_model_name_and_scale_mismatch(tmp_path):
    with pytest.raises(HatstreamError, match="neither a file nor a built-in"):
        load_model("no-such-model")
    model = HAT(upscale=2, window_size=8, embed_dim=12, depths=[1], num_heads=[2], squeeze_factor=4)
    torch.save({"params_ema": model.state_dict()}, tmp_path / "x2.pth")
    with pytest.raises(HatstreamError, match="x2"):
        load_model(tmp_path / "x2.pth", scale=4)
