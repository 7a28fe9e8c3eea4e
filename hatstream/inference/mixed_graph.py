"""bf16 graphs for OpenVINO that keep HAT's precision-sensitive parts in fp32.

With `INFERENCE_PRECISION_HINT=bf16`, OpenVINO's CPU plugin runs every op of a graph in bf16
except the tail after the last matmul or convolution. For HAT that is 49.5 dB from fp32 (HAT-S
x4, 64x64 and 128x128), under the 50 dB bound: each of the ~100 additions to the residual trunk
rounds it to bf16's 8-bit mantissa (`models.hat.keep_sensitive_parts_fp32` says why in full).
The plugin leaves an op in its original precision when the op carries the runtime attribute
`DisablePrecisionConversion` (value `dynamic:f16`: no conversion from any type to a 16-bit
float; the CPU plugin reads it for bf16 too). Python cannot create that attribute on a node, but
OpenVINO's IR reader can: so the ONNX graph is saved as IR, the attribute is written into the
XML of the ops that torch's bf16 path keeps in fp32, and the IR is read back.

Kept in fp32, as in torch: the residual trunk's additions, the LayerNorms (MVN and their affine
ops), and the image-sized ends (conv_first, conv_after_body and the reconstruction head, and the
mean shift around them). Everything else (attention, MLPs, the CAB convolutions) runs in bf16.
The op names come from the TorchScript exporter, which names each op by its module's path
(`/model/layers.0/residual_group/blocks.3/Add_1`; in a chain, `/model/passes.1/layers.0/...`);
`tests/test_backend.py` and `tests/test_chain.py` pin the marked ops on small HATs, so an exporter
that names them differently fails there, not silently.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

ATTRIBUTE = {"name": "DisablePrecisionConversion", "version": "0", "value": "dynamic:f16"}

# A HAT's own ops are under /model, or under /model/passes.<i> for each pass of a chain (models.chain).
_NET = r"^/model(/passes\.\d+)?"
# An addition that belongs to the network, a residual group, a block or the OCAB itself, not to
# a layer inside one (a Linear's bias, the attention's position bias): the trunk's residuals.
_TRUNK_ADD = re.compile(_NET + r"(/layers\.\d+(/residual_group/(blocks\.\d+|overlap_attn))?)?/Add(_\d+)?$")
# The image-sized ends, and the ops of the network itself (mean shift, scaling, the global residual;
# a chain's clamp between passes).
_ENDS = re.compile(_NET + r"/((conv_first|conv_after_body|conv_before_upsample|upsample|conv_last|folded_head)"
                   r"(/|$)|[A-Za-z]+(_\d+)?$)")
_LAYER_NORM = re.compile(r"/LayerNormalization(_\d+)?$")


def keeps_fp32(name: str, op_type: str) -> bool:
    """Whether the op `name` (TorchScript exporter naming) of type `op_type` stays fp32 in a bf16 HAT graph."""
    if op_type in ("Parameter", "Result", "Const"):
        return False  # the plugin handles the graph's inputs, outputs and constants itself
    if op_type == "MVN":  # LayerNorm's normalisation: the ONNX reader names it MVN_<n>, not by module
        return True
    if op_type == "Add" and _TRUNK_ADD.match(name):
        return True
    return bool(_ENDS.match(name) or _LAYER_NORM.search(name))


def mark_fp32_ops(xml_path: Path) -> int:
    """Give every op of the IR at `xml_path` that `keeps_fp32` names the attribute, in place; the count."""
    tree = ET.parse(xml_path)
    marked = 0
    for layer in tree.getroot().find("layers"):
        if not keeps_fp32(layer.get("name", ""), layer.get("type", "")):
            continue
        rt_info = layer.find("rt_info")
        if rt_info is None:
            rt_info = ET.SubElement(layer, "rt_info")
        ET.SubElement(rt_info, "attribute", ATTRIBUTE)
        marked += 1
    tree.write(xml_path, encoding="utf-8", xml_declaration=True)
    return marked


def write_mixed_ir(onnx_path: Path, xml_path: Path) -> int:
    """Convert the ONNX graph at `onnx_path` to IR at `xml_path` (and its .bin), with the fp32 ops
    marked; returns how many were marked. The caller makes the write atomic."""
    import openvino as ov

    ov.save_model(ov.Core().read_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
    return mark_fp32_ops(xml_path)
