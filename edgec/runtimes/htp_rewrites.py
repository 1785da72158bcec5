"""What to change in a graph when the HTP rejects a node, one entry per known rejection.

Each entry was seen with onnxruntime-qnn 2.7.0 (QNN 2.40 HTP backend, simulated on
x86-64) unless its comment says where else it comes from. `match` is looked up in
the text `coverage()` builds for the node: QNN's reason plus the node's dtypes
(e.g. "Failed to create Cast node. | dtypes: float int64"). Entries are tried in
order, so specific ones come first.
"""

from dataclasses import dataclass

# ORT's fused com.microsoft kernels, as onnxruntime.transformers.optimizer emits them.
# The QNN EP takes a few others (FusedMatMul and QuickGelu ran).
FUSED_ORT_OPS = frozenset({
    "Attention", "MultiHeadAttention", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
    "EmbedLayerNormalization", "BiasGelu", "FastGelu", "BiasAdd", "BiasSoftmax",
    "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
})


@dataclass(frozen=True)
class Rewrite:
    ops: frozenset[str]  # op types it applies to; empty: any op
    match: str  # text that must occur in the node's reason or dtypes; "": always
    fix: str


REWRITES: tuple[Rewrite, ...] = (
    # Relu, Where and Expand with a symbolic dim: "Cannot get shape".
    Rewrite(frozenset(), "Cannot get shape",
            "give every tensor a static shape: export with fixed input dims "
            "(or onnxruntime.tools.make_dynamic_shape_fixed) and fold shape arithmetic"),
    # Cast float32 -> int64: QNN error 3110, no int64 output type.
    Rewrite(frozenset({"Cast"}), "int64", "cast to int32 instead of int64; the HTP has no int64 Cast"),
    # Gather validates, then finalisation cannot create q::Gather for a float table.
    # Quantized tables ran: MiniLM's uint8 word table and the token budget's uint16
    # hidden states, both with int64 ids; a tiny uint8 table with int64 ids did not.
    Rewrite(frozenset({"Gather"}), "",
            "quantize the gathered table (QDQ uint8 or uint16) and, if it still fails, "
            "feed int32 indices"),
    # GatherND with batch_dims=1: "Failed to create GatherND node" (3110); an
    # exported MiniLM failed on its GatherND too.
    Rewrite(frozenset({"GatherND"}), "",
            "rewrite as Gather on flattened indices: Reshape the data to [rows, ...], "
            "compute the flat row index in int32, Gather on axis 0, Reshape back"),
    # Erf: "not supported by QNN EP", float or inside QDQ; Gelu (opset 20 or
    # com.microsoft) validates but finalisation cannot create QNN_Gelu, float or QDQ.
    # x*sigmoid(1.702x) in QDQ runs, and so does com.microsoft QuickGelu.
    Rewrite(frozenset({"Erf", "Gelu"}), "",
            "replace the erf Gelu by x*sigmoid(1.702*x) or the tanh approximation, "
            "then quantize it (QDQ, 16-bit activations)"),
    # Float Where fails at finalisation (could not create q::Select); QDQ uint16 Where runs.
    Rewrite(frozenset({"Where"}), "", "quantize the Where and its float inputs (QDQ, 16-bit activations)"),
    # FastGelu, BiasGelu and SkipLayerNormalization: "not supported by QNN EP".
    Rewrite(FUSED_ORT_OPS, "",
            "skip onnxruntime.transformers.optimizer fusions and quantize the plain ONNX graph; "
            "the QNN EP does not take this fused ORT kernel"),
    # MatMul with int16 weights: "Failed to add fused Matmul node" (3110).
    Rewrite(frozenset({"MatMul", "Gemm", "Conv"}), "int16",
            "quantize weights to int8 (symmetric, per channel) and keep 16-bit activations (A16W8)"),
    # The QNN EP warns "does not support a single Quantize/Dequantize node in a partition".
    Rewrite(frozenset({"QuantizeLinear", "DequantizeLinear"}), "lone Q/DQ",
            "fix the rejected op this Q/DQ belongs to; the Q/DQ then moves with it"),
    # Where the HTP takes int64 it narrows it: an int64 Add ran on the low 32 bits of its
    # inputs and saturated at 2**31-1.
    Rewrite(frozenset(), "int64", "compute in int32: the HTP narrows int64 to int32 where it takes it at all"),
)

FALLBACK = ("no known rewrite: quantize the node (QDQ, 16-bit activations) or replace it "
            "by ops from the QNN EP's supported-operator list")


def rewrite_for(op_type: str, context: str) -> str:
    """The fix of the first entry whose op and text match, else the generic hint."""
    for r in REWRITES:
        if (not r.ops or op_type in r.ops) and r.match in context:
            return r.fix
    return FALLBACK
