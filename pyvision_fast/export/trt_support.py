"""Which ONNX operators TensorRT's ONNX parser accepts without plugins.

The set follows the operator table of onnx-tensorrt (the parser inside TensorRT 10.x); a node outside it
would need a plugin. Known per-operator limits that the parser enforces are checked as well.
"""
from __future__ import annotations

import onnx
from onnx import numpy_helper

TENSORRT_ONNX_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Bernoulli
BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow Cast CastLike Ceil Celu CenterCropPad Clip
Compress Concat ConcatFromSequence Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DFT DeformConv
DepthToSpace DequantizeLinear Det Div Dropout DynamicQuantizeLinear Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor GRU Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater
GreaterOrEqual GridSample GroupNormalization HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If
ImageScaler InstanceNormalization IsInf IsNaN LRN LSTM LayerNormalization LeakyRelu Less LessOrEqual Log
LogSoftmax Loop LpNormalization LpPool MatMul MatMulInteger Max MaxPool MaxRoiPool MaxUnpool Mean
MeanVarianceNormalization Min Mish Mod Mul Multinomial Neg NonMaxSuppression NonZero Not OneHot Or PRelu Pad
ParametricSoftplus Pow QLinearConv QLinearMatMul QuantizeLinear RNN RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign Round STFT ScaledTanh Scan
Scatter ScatterElements ScatterND Selu SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert
SequenceLength Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split
SplitToSequence Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unique Unsqueeze Upsample
Where Xor
""".split())

# TensorRT's TopK handles K up to 3840.
TOPK_MAX_K = 3840


def _walk(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _walk(g)


def unsupported_nodes(model: onnx.ModelProto) -> list[str]:
    """Descriptions of the nodes (subgraphs included) TensorRT would need a plugin for; empty if none."""
    problems = []
    constants = {}
    for node in _walk(model.graph):
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    for init in model.graph.initializer:
        constants[init.name] = numpy_helper.to_array(init)
    for node in _walk(model.graph):
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.op_type} (custom domain {node.domain!r})")
        elif node.op_type not in TENSORRT_ONNX_OPS:
            problems.append(f"{node.op_type} (not in TensorRT's ONNX operator set)")
        elif node.op_type == "TopK" and len(node.input) > 1 and node.input[1] in constants:
            k = int(constants[node.input[1]].reshape(-1)[0])
            if k > TOPK_MAX_K:
                problems.append(f"TopK with K={k} (TensorRT supports K <= {TOPK_MAX_K})")
    return problems
