"""Error paths of InputSpec and wrap_model: one-line messages saying what was expected, what
arrived and the fix."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qrdeploy.errors import ConfigError, GraphError, UnsupportedOpError
from qrdeploy.graphio.inputspec import InputSpec, wrap_model
from tests.unit.inputspec_models import twin

PARSE_CASES = {
    "unknown_key": ("scale=2",
                    r"term 'scale=2' is not KEY=VALUE with KEY in channels\|dtype\|layout"),
    "no_equals": ("nhwc", r"term 'nhwc' is not KEY=VALUE"),
    "bad_range": ("range=0-2", r"range must be one of 0-1\|0-255, got '0-2'"),
    "bad_layout": ("layout=chw", r"layout must be one of nchw\|nhwc"),
    "bad_number": ("mean=0.4/x", r"mean must be numbers separated by '/'"),
    "std_zero": ("std=0.2/0/0.2", r"std must be > 0"),
    "mean_std_lengths": ("mean=1/2/3,std=1/2", r"mean has 3 values and std 2"),
    "uint8_needs_byte_range": ("dtype=uint8", r"dtype=uint8 holds 0-255 values; add range=0-255"),
    "uint8_with_mean": ("range=0-255,dtype=uint8,mean=0.485/0.456/0.406",
                        r"dtype=uint8 cannot carry mean/std"),
}


@pytest.mark.parametrize("name", list(PARSE_CASES), ids=list(PARSE_CASES))
def test_parse_refuses(name: str) -> None:
    text, match = PARSE_CASES[name]
    with pytest.raises(ConfigError, match=match):
        InputSpec.parse(text)


def _two_inputs() -> onnx.ModelProto:
    model = _with_node(helper.make_node("Add", ["img", "aux"], ["img2"]))
    model.graph.input.append(helper.make_tensor_value_info("aux", TensorProto.FLOAT, [1]))
    return model


def _with_node(node: onnx.NodeProto, inits: dict[str, np.ndarray] | None = None
               ) -> onnx.ModelProto:
    """The pixel twin with `node` reading 'img' into 'img2', which the conv reads instead."""
    model = twin(InputSpec())
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.input[0] = "img2"
    model.graph.node.insert(1, node)
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in (inits or {}).items())
    return model


def _fp16() -> onnx.ModelProto:
    model = twin(InputSpec())
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    return model


QDQ = {"s": np.float32(0.1), "z": np.uint8(0)}
WRAP_CASES: dict[str, tuple[Callable[[], onnx.ModelProto], str, dict[str, str], type, str]] = {
    "two_inputs_no_choice": (_two_inputs, "", {}, GraphError,
                             r"the model has inputs in, aux; choose the image with "
                             r"--input-name NAME"),
    "unknown_input": (_two_inputs, "", {"input_name": "image"}, GraphError,
                      r"input 'image' is not among the model's inputs \(in, aux\)"),
    "other_input_without_default": (_two_inputs, "", {"input_name": "in"}, GraphError,
                                    r"inputs aux have no default"),
    "two_outputs_no_choice": (lambda: twin(InputSpec(), extra_outputs=("feat",)), "", {},
                              GraphError, r"the model has outputs logits, feat; choose the "
                              r"logits with --output-name NAME"),
    "unknown_output": (lambda: twin(InputSpec()), "", {"output_name": "probs"}, GraphError,
                       r"the model has no output 'probs'; its outputs are logits"),
    "dtype_mismatch": (lambda: twin(InputSpec()), "range=0-255,dtype=uint8", {}, ConfigError,
                       r"input 'in' is FLOAT but the input spec says dtype=uint8; pass "
                       r"--input-spec range=0-1 \(the input is float: not dtype=uint8, nor the "
                       r"0-255 range that went with it\)$"),
    "uint8_input_float_spec": (lambda: twin(InputSpec.parse("range=0-255,dtype=uint8")), "", {},
                               ConfigError, r"input 'in' is UINT8 but the input spec says "
                               r"dtype=float32; pass --input-spec "
                               r"range=0-255,(layout=nchw,)?dtype=uint8 "),
    "uint8_input_keeps_the_layout": (
        lambda: twin(InputSpec.parse("range=0-255,dtype=uint8,layout=nhwc")), "layout=nhwc", {},
        ConfigError, r"pass --input-spec range=0-255,layout=nhwc,dtype=uint8 "),
    "channels_mismatch": (lambda: twin(InputSpec()), "mean=0.5/0.5", {}, ConfigError,
                          r"mean has 2 values for 3 channels"),
    "layout_mismatch_shape": (lambda: twin(InputSpec(), batch="N"), "layout=nhwc,mean=1/2/3", {},
                              ConfigError, r"mean has 3 values for 6 channels"),
    "fp16_not_upcast": (_fp16, "", {}, UnsupportedOpError,
                        r"input 'in' is float16 .* pass upcast_fp16=True"),
    "uint8_read_by_non_cast": (lambda: _uint8_read_by("Abs"), "range=0-255,dtype=uint8", {},
                               UnsupportedOpError, r"op Abs \(node 'reader'\) reads the "
                               r"uint8 input 'in'; supported: uint8 inputs read only by Casts "
                               r"to float or as the codes of DequantizeLinear or an integer "
                               r"kernel \(QLinearConv, ...\), directly or through "
                               r"Transpose/Reshape/Identity/"),
    "uint8_moved_then_read_by_non_cast": (
        lambda: _uint8_read_by("Identity"), "range=0-255,dtype=uint8", {}, UnsupportedOpError,
        r"op Div \(node 'undo1'\) reads the uint8 input 'in' through Identity; supported: "),
    "spatial_not_static": (lambda: _dynamic_hw(), "", {}, GraphError,
                           r"input 'in' has shape \[None, 3, None, None\]"),
}


def _uint8_read_by(op: str) -> onnx.ModelProto:
    spec = InputSpec.parse("range=0-255,dtype=uint8")
    model = twin(spec)
    model.graph.node[0].op_type = op
    model.graph.node[0].name = "reader"
    del model.graph.node[0].attribute[:]
    return model


def _dynamic_hw() -> onnx.ModelProto:
    model = twin(InputSpec())
    for d in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_param = "s"
    return model


@pytest.mark.parametrize("name", list(WRAP_CASES), ids=list(WRAP_CASES))
def test_wrap_refuses(name: str) -> None:
    build, text, kwargs, exc, match = WRAP_CASES[name]
    with pytest.raises(exc, match=match) as info:
        wrap_model(build(), InputSpec.parse(text), **kwargs)
    assert "\n" not in str(info.value)
