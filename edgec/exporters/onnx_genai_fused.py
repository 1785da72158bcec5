"""The GenAI decoder written on ONNX Runtime's fused CPU kernels, the graph its own model builder emits.

Traced from torch, attention is a dozen plain ops per layer that ONNX Runtime
runs one by one over the whole growing cache, and every step copies the
cache (past + new = present). Written directly from the `Decoder`'s weights,
each layer is: SkipSimplifiedLayerNormalization (residual add and RMSNorm in
one kernel), one packed q/k/v projection, GroupQueryAttention (RoPE from
cos/sin tables, the causal and sliding-window mask, soft cap and the KV cache,
written in place into a buffer GenAI allocates once:
`past_present_share_buffer`), the o-projection, and one packed gate/up
projection. Weight quantization then turns every MatMul into MatMulNBits.

Head counts are per node, so a pruned decoder keeps its per-layer shapes.
What GroupQueryAttention cannot express (RoPE over part of each head, an odd
head size) keeps the traced graph: `unfusable` says why, and the manifest
records which graph a bundle holds. RoPE tables that change with the
sequence length (LongRoPE) need nothing here: the export serves the static
positions of one table.
"""

from __future__ import annotations

import numpy as np
import torch

from edgec.models.decoder import Decoder

OPSET = 21
MS = "com.microsoft"


def unfusable(module: Decoder) -> str | None:
    """Why GroupQueryAttention cannot compute this decoder, or None when it can."""
    layers = list(module.layers)
    if any(b.attn.head_dim % 2 for b in layers):
        return "an odd head size has no rotary half"
    if module.inv_freq.shape[-1] * 2 != layers[0].attn.head_dim:
        return "RoPE covers part of each head (partial rotary)"
    return None


class _Graph:
    """Nodes, initializers and unique names."""

    def __init__(self):
        self.nodes, self.inits, self._n = [], [], 0
        self._shapes: dict[tuple, str] = {}

    def name(self, base: str) -> str:
        self._n += 1
        return f"/{base}_{self._n}"

    def const(self, base: str, value) -> str:
        from onnx import numpy_helper

        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def ints(self, base: str, values: list[int]) -> str:
        """An int64 constant (a shape, split sizes), written once however many layers use it."""
        key = (base, tuple(values))
        if key not in self._shapes:
            self._shapes[key] = self.const(base, np.array(values, np.int64))
        return self._shapes[key]

    def op(self, op: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "", **attrs):
        from onnx import helper

        name = self.name(op)
        outs = [f"{name}/out{i}" for i in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, domain=domain, **attrs))
        return outs[0] if len(outs) == 1 else outs


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy()


class _Writer:
    """Walks the decoder once, keeping the residual stream and the update not yet added to it, so each
    add lands in the next norm's SkipSimplifiedLayerNormalization."""

    def __init__(self, module: Decoder, context: int):
        self.m, self.g, self.context = module, _Graph(), context
        self.resid: str | None = None
        self.pending: str | None = None
        self.eps = module.norm.eps

    def linear(self, x: str, layers: list[torch.nn.Linear], base: str) -> str:
        """One MatMul over the concatenated weights ([in, out] as MatMul reads them), bias added where any
        is non-zero."""
        w = np.concatenate([_np(l.weight).T for l in layers], axis=1)
        y = self.g.op("MatMul", [x, self.g.const(f"{base}.weight", w)])
        biases = [l.bias for l in layers]
        if any(b is not None and bool(b.detach().abs().max() > 0) for b in biases):
            b = np.concatenate([_np(b) if b is not None else np.zeros(l.out_features, np.float32)
                                for b, l in zip(biases, layers)])
            y = self.g.op("Add", [y, self.g.const(f"{base}.bias", b)])
        return y

    def rms(self, x: str, norm, base: str) -> str:
        return self.g.op("SimplifiedLayerNormalization", [x, self.g.const(f"{base}.weight", _np(norm.weight))],
                         axis=-1, epsilon=float(norm.eps), stash_type=1)

    def norm_in(self, norm, base: str) -> str:
        """norm(resid + pending), folding the pending add into the norm's kernel."""
        if self.pending is None:
            return self.rms(self.resid, norm, base)
        w = self.g.const(f"{base}.weight", _np(norm.weight))
        out, _, _, total = self.g.op("SkipSimplifiedLayerNormalization", [self.pending, self.resid, w], 4,
                                     domain=MS, epsilon=float(norm.eps))
        self.resid, self.pending = total, None
        return out

    def settle(self) -> str:
        if self.pending is not None:
            self.resid, self.pending = self.g.op("Add", [self.resid, self.pending]), None
        return self.resid

    def update(self, block, out: str, post: str, base: str) -> None:
        """Add a branch's output to the stream: as is (pre norms), after its post-norm (sandwich), or
        right away after its post-norm (post norms: the next branch reads the stream itself)."""
        if block.norms == "pre":
            self.pending = out
            return
        normed = self.rms(out, getattr(block, post), f"{base}.{post}")
        self.settle()
        self.pending = normed
        if block.norms == "post":
            self.settle()

    def head_norm(self, x: str, norm, head_dim: int, base: str) -> str:
        """RMSNorm over each head of a [B, S, heads * D] projection."""
        split = self.g.op("Reshape", [x, self.g.ints("heads_shape", [0, 0, -1, head_dim])])
        normed = self.rms(split, norm, base)
        return self.g.op("Reshape", [normed, self.g.ints("flat_shape", [0, 0, -1])])

    def attention(self, i: int, block, h: str, lengths: tuple[str, str], caches: list[tuple[str, str]]) -> str:
        a, base = block.attn, f"layers.{i}.attn"
        d = a.head_dim
        qkv = self.linear(h, [a.q, a.k, a.v], f"{base}.qkv")
        if a.qk_norm is None:
            q, k, v = qkv, "", ""
        else:
            sizes = self.g.ints("qkv_sizes", [a.heads * d, a.kv_heads * d, a.kv_heads * d])
            q, k, v = self.g.op("Split", [qkv, sizes], 3, axis=-1)
            if a.qk_norm == "full":
                q, k = self.rms(q, a.q_norm, f"{base}.q_norm"), self.rms(k, a.k_norm, f"{base}.k_norm")
            else:
                q = self.head_norm(q, a.q_norm, d, f"{base}.q_norm")
                k = self.head_norm(k, a.k_norm, d, f"{base}.k_norm")
        cos, sin = caches[a.rope] if a.rope is not None else ("", "")
        out, _, _ = self.g.op("GroupQueryAttention",
                        [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value", *lengths, cos, sin],
                        [f"/{base}/out", f"present.{i}.key", f"present.{i}.value"], domain=MS,
                        num_heads=a.heads, kv_num_heads=a.kv_heads, scale=float(a.scale),
                        softcap=float(a.softcap or 0.0), local_window_size=a.window if a.window else -1,
                        do_rotary=int(a.rope is not None), rotary_interleaved=0)
        return self.linear(out, [a.o], f"{base}.o")

    def mlp(self, i: int, block, h: str) -> str:
        base = f"layers.{i}.mlp"
        gate, up = self.g.op("Split", [self.linear(h, [block.gate, block.up], f"{base}.gate_up"),
                                       self.g.ints("gate_up_sizes", [block.gate.out_features] * 2)], 2, axis=-1)
        if block.act == "silu":
            act = self.g.op("Mul", [gate, self.g.op("Sigmoid", [gate])])
        else:
            act = self.g.op("FastGelu", [gate], domain=MS)
        return self.linear(self.g.op("Mul", [act, up]), [block.down], f"{base}.down")

    def rope_caches(self) -> list[tuple[str, str]]:
        """cos/sin [context, D/2] per RoPE table, the attention factor folded in."""
        pos = torch.arange(self.context, dtype=torch.float32)[:, None]
        out = []
        for t, scale in enumerate(self.m.rope_scale):
            freqs = pos * self.m.inv_freq[t][None, :]
            out.append((self.g.const(f"cos_cache{t}", _np(freqs.cos() * scale)),
                        self.g.const(f"sin_cache{t}", _np(freqs.sin() * scale))))
        return out

    def write(self):
        from onnx import TensorProto, helper

        m, g = self.m, self.g
        one = g.const("one", np.array([1], np.int64))
        seqlens = g.op("Cast", [g.op("Sub", [g.op("ReduceSum", ["attention_mask", one], keepdims=0), one])],
                       to=TensorProto.INT32)
        total = g.op("Cast", [g.op("Gather", [g.op("Shape", ["attention_mask"]),
                                              g.const("axis1", np.array(1, np.int64))], axis=0)],
                     to=TensorProto.INT32)
        caches = self.rope_caches()
        self.resid = g.op("Gather", [g.const("embed.weight", _np(m.embed.weight)), "input_ids"], axis=0)
        if m.embed_scale != 1.0:
            self.resid = g.op("Mul", [self.resid, g.const("embed_scale", np.array(m.embed_scale, np.float32))])
        for i, block in enumerate(m.layers):
            h = self.settle() if block.norms == "post" else self.norm_in(block.attn_norm, f"layers.{i}.attn_norm")
            self.update(block, self.attention(i, block, h, (seqlens, total), caches), "attn_post_norm",
                        f"layers.{i}")
            h = self.settle() if block.norms == "post" else self.norm_in(block.mlp_norm, f"layers.{i}.mlp_norm")
            self.update(block, self.mlp(i, block, h), "mlp_post_norm", f"layers.{i}")
        logits = self.linear(self.norm_in(m.norm, "norm"), [m.lm_head], "lm_head")
        if m.logit_scale != 1.0:
            logits = g.op("Mul", [logits, g.const("logit_scale", np.array(m.logit_scale, np.float32))])
        if m.logit_softcap is not None:
            cap = g.const("logit_softcap", np.array(m.logit_softcap, np.float32))
            logits = g.op("Mul", [g.op("Tanh", [g.op("Div", [logits, cap])]), cap])
        g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="/logits"))
        return self._model()

    def _model(self):
        from onnx import TensorProto, helper

        m, f32 = self.m, TensorProto.FLOAT
        inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
                  helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence"])]
        outputs = [helper.make_tensor_value_info("logits", f32, ["batch", "sequence", m.embed.num_embeddings])]
        for i, block in enumerate(m.layers):
            shape = lambda n: ["batch", block.attn.kv_heads, n, block.attn.head_dim]  # noqa: E731
            for part in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{part}", f32, shape("past_sequence")))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{part}", f32, shape("present_sequence")))
        graph = helper.make_graph(self.g.nodes, "edgec-decoder", inputs, outputs, self.g.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                                 producer_name="edgec")


def fused_decoder(module: Decoder, context: int):
    """The decoder as an ONNX model on ORT's fused ops, float weights; check `unfusable` first."""
    with torch.no_grad():
        return _Writer(module, context).write()
