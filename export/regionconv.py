"""The ``lc::RegionConv`` ONNX op: its one definition, shared by the exporter, the ONNX
Runtime lowering and (later) the TensorRT plugin.

``RegionConv(X, W, B, M) = act(conv2d(X, W, B)) ⊙ M`` (docs/export.md; region semantics in
docs/architecture.md): stride 1, "same"
padding, any dilation and groups; ``activation`` 0 = none, 1 = ReLU. The model-local
function body below lets any ONNX consumer run the node; ``plugin_namespace = "lc"``
makes TensorRT's parser take the plugin instead.
"""

from __future__ import annotations

import onnx
from onnx import AttributeProto, helper

DOMAIN = "lc"
OP_TYPE = "RegionConv"
VERSION = 1
PLUGIN_NAMESPACE = "lc"
ACTIVATIONS = {"none": 0, "relu": 1}

# Attribute name → ONNX attribute type: the contract between node and plugin fields.
ATTRIBUTES: dict[str, int] = {
    "pads": AttributeProto.INTS,
    "dilations": AttributeProto.INTS,
    "group": AttributeProto.INT,
    "activation": AttributeProto.INT,
    "plugin_namespace": AttributeProto.STRING,
}


def _ref(name: str, attribute: str, kind: int) -> AttributeProto:
    proto = AttributeProto()
    proto.name, proto.ref_attr_name, proto.type = name, attribute, kind
    return proto


def function_proto(opset: int) -> onnx.FunctionProto:
    """The function body: Conv, then ``max(c, c·(1 − activation))`` (ReLU when 1), then ``⊙ M``."""
    conv = helper.make_node("Conv", ["X", "W", "B"], ["conv"])
    conv.attribute.extend([_ref("pads", "pads", AttributeProto.INTS),
                           _ref("dilations", "dilations", AttributeProto.INTS),
                           _ref("group", "group", AttributeProto.INT)])
    activation = helper.make_node("Constant", [], ["activation"])
    activation.attribute.append(_ref("value_int", "activation", AttributeProto.INT))
    nodes = [
        conv,
        activation,
        helper.make_node("Cast", ["activation"], ["activation_f"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Constant", [], ["one"], value_float=1.0),
        helper.make_node("Sub", ["one", "activation_f"], ["slope"]),
        helper.make_node("Mul", ["conv", "slope"], ["scaled"]),
        helper.make_node("Max", ["conv", "scaled"], ["activated"]),
        helper.make_node("Mul", ["activated", "M"], ["Y"]),
    ]
    return helper.make_function(
        DOMAIN, OP_TYPE, ["X", "W", "B", "M"], ["Y"], nodes,
        [helper.make_opsetid("", opset)],
        attributes=["pads", "dilations", "group", "activation"],
        doc_string="Region convolution: act(conv2d(X, W, B)) * M, stride 1 (layercascade region semantics).",
    )


def node_attributes(padding: tuple[int, int], dilation: tuple[int, int], groups: int, relu: bool) -> dict:
    """The attributes of one RegionConv node, keyed exactly as :data:`ATTRIBUTES`."""
    attributes = {
        "pads": [padding[0], padding[1], padding[0], padding[1]],
        "dilations": list(dilation),
        "group": groups,
        "activation": ACTIVATIONS["relu" if relu else "none"],
        "plugin_namespace": PLUGIN_NAMESPACE,
    }
    assert attributes.keys() == ATTRIBUTES.keys()
    return attributes
