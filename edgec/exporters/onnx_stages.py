"""The decoder ONNX of a GenAI bundle, cut at its attention cores into one graph per stretch between them.

The whole-model graph takes every layer's past keys and values at once, so a
runtime that keeps the KV cache on disk would have to bring all of it into
memory for every step. Cut at the attention cores, the same graph (the same
weights, float or MatMulNBits int4/int8) does all the model math (embedding,
o-projection, residuals, MLP, norms, q/k/v, RoPE at the true `position_ids`,
the head) and hands each layer's q, k and v out, so attention can run over
whatever chunks of the cache a policy picks:

  stage 0:  input_ids, position_ids        -> x_out, q, k, v   (layer 0)
  stage i:  x, ctx, position_ids           -> x_out, q, k, v   (layer i; x and ctx from layer i-1)
  stage L:  x, ctx                         -> logits

x is the residual stream entering a layer; q is [1, kv_heads, g*S, D] with
the g query heads of a KV head stacked along the rows (row r*S + s is head
j*g + r at new token s), k and v are [1, kv_heads, S, D] after RoPE; ctx is
the attention output [1, S, heads*D] the o-projection reads. The cut points
are found from the graph's structure: `present.i.key = Concat(past, k)`, the
score MatMul reading it, the MatMul reading `present.i.value`, then the
o-projection and the residual Add below it (after a post-attention norm, where
the family has one). q is taken before the score scale: the runtime applies
each layer's scale, soft cap and sliding window (stages.json's `layers`).

The fused graph (GroupQueryAttention, RoPE inside it) is cut at each
attention node's inputs and output instead; each stage then ends in
RotaryEmbedding on q and k at `position_ids` with the node's own cos/sin
tables, and the reshapes to the layout above.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgec.errors import ExportError
from edgec.exporters.formats import SPEC_FILE

PASS = ("Reshape", "Transpose")
LINEAR = ("MatMul", "MatMulNBits", "Gemm")


def stage_file(i: int) -> str:
    return f"stage_{i:03d}.onnx"


class _Graph:
    def __init__(self, graph):
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in graph.node:
            for t in n.input:
                self.consumers.setdefault(t, []).append(n)
        self.constants = {i.name for i in graph.initializer} | \
            {o for n in graph.node if n.op_type == "Constant" for o in n.output}

    def only(self, tensor: str, what: str):
        users = self.consumers.get(tensor, [])
        if len(users) != 1:
            raise ExportError(f"cannot cut the decoder graph: {tensor} feeds {len(users)} nodes where {what} "
                              "was expected; re-export it with edgec")
        return users[0]

    def follow(self, tensor: str, stop: tuple[str, ...], what: str):
        """The first node of a `stop` type down a chain of Reshape/Transpose from `tensor`."""
        node = self.only(tensor, what)
        while node.op_type in PASS:
            node = self.only(node.output[0], what)
        if node.op_type not in stop:
            raise ExportError(f"cannot cut the decoder graph: found {node.op_type} where {what} was expected; "
                              "re-export it with edgec")
        return node


def cut_points(graph, n_layers: int) -> list[dict]:
    """Per layer: its input x, its q, k, v and its attention output ctx (tensor names); for the fused graph
    also the attention node (`fused`), whose q, k, v are before RoPE."""
    g, layers = _Graph(graph), []
    for i in range(n_layers):
        gqa = g.producer.get(f"present.{i}.key")
        if gqa is not None and gqa.op_type == "GroupQueryAttention":
            o_proj = g.follow(gqa.output[0], LINEAR, "the o-projection")
            x = _residual(graph, g, o_proj)
            if x is None:
                raise ExportError(f"cannot cut the decoder graph: no residual add after layer {i}'s o-projection")
            layers.append({"x": x, "q": gqa.input[0], "k": gqa.input[1], "v": gqa.input[2],
                           "ctx": gqa.output[0], "fused": gqa})
            continue
        cat_k, cat_v = g.producer.get(f"present.{i}.key"), g.producer.get(f"present.{i}.value")
        if cat_k is None or cat_v is None or cat_k.op_type != "Concat" or cat_v.op_type != "Concat":
            raise ExportError(f"the decoder graph has no present.{i}.key/value = Concat(past, new): it is not "
                              "a GenAI decoder written by edgec; re-export it")
        score = g.follow(f"present.{i}.key", ("MatMul",), "the attention scores")
        pv = g.only(f"present.{i}.value", "the attention-weighted values")
        o_proj = g.follow(pv.output[0], LINEAR, "the o-projection")
        x = _residual(graph, g, o_proj)
        if x is None:
            raise ExportError(f"cannot cut the decoder graph: no residual Add after layer {i}'s o-projection")
        layers.append({"x": x, "q": score.input[0], "k": cat_k.input[1], "v": cat_v.input[1],
                       "ctx": o_proj.input[0]})
    return layers


def _residual(graph, g: _Graph, o_proj) -> str | None:
    """The stream the attention output is added to: the other input of the first Add below the o-projection
    that is fed from outside what the o-projection computes (its bias and a post-norm are inside it)."""
    below = set(o_proj.output)
    order = list(graph.node)
    for node in order[order.index(o_proj) + 1:]:  # nodes are in topological order
        inside = [t in below for t in node.input]
        if not any(inside):
            continue
        outside = [t for t, inn in zip(node.input, inside) if not inn and t not in g.constants]
        if node.op_type == "Add" and len(node.input) == 2 and len(outside) == 1:
            return outside[0]
        if node.op_type == "SkipSimplifiedLayerNormalization" and inside[0] and len(outside) == 1:
            return outside[0]  # the residual add folded into the next norm's kernel
        below.update(node.output)
    return None


def cut_stages(model_path: Path, genai_config: dict, out_dir: Path, attention: list[dict] | None = None,
               progress=None) -> dict:
    """Write stage_000.onnx .. stage_L.onnx (weights as external data beside each) and stages.json;
    `attention` is each layer's score scale, soft cap and window (default: head_size ** -0.5, none, none)."""
    import onnx
    from onnx.utils import Extractor

    decoder = genai_config["model"]["decoder"]
    n = int(decoder["num_hidden_layers"])
    model = onnx.load(str(model_path))
    points = cut_points(model.graph, n)
    _declare(model.graph, [t for p in points for key in ("x", "q", "k", "v", "ctx") for t in [p[key]] if t])
    extractor = Extractor(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n + 1):
        fused = points[min(i, n - 1)].get("fused") is not None
        if i == 0:
            inputs = {"input_ids": "input_ids", "position_ids": "position_ids"}
        else:
            inputs = {points[i - 1]["x"]: "x", points[i - 1]["ctx"]: "ctx"}
            if i < n:
                inputs["position_ids"] = "position_ids"
        if i == n:
            outputs = {"logits": "logits"}
        elif fused:  # the attention node's own inputs; _attention_tail makes q, k, v of them
            outputs = {points[i]["x"]: "x_out", **{t: t for t in points[i]["fused"].input[:3] if t}}
        else:
            outputs = {points[i]["x"]: "x_out", points[i]["q"]: "q", points[i]["k"]: "k", points[i]["v"]: "v"}
        extract = {t: name for t, name in inputs.items() if not (fused and t == "position_ids")}
        try:
            stage = extractor.extract_model(list(extract), list(outputs))
        except Exception as e:  # onnx raises plain errors for a cut that does not close
            raise ExportError(f"cannot cut decoder stage {i} out of {model_path} ({type(e).__name__}: {e})") from e
        _pin_shapes_of_past(stage.graph, model.graph)
        _rename(stage.graph, {**inputs, **outputs})
        if fused and i < n:
            _attention_tail(stage, points[i]["fused"], model.graph)
        path = out_dir / stage_file(i)
        onnx.save(stage, str(path), save_as_external_data=True, location=path.name + ".data",
                  size_threshold=1024)
        if progress is not None:
            progress(i + 1, n + 1)
    d = int(decoder["head_size"])
    attention = attention or [{"scale": d ** -0.5, "softcap": None, "window": None}] * n
    spec = {"format": "edgec decoder stages", "version": 3, "source": str(model_path),
            "stages": [stage_file(i) for i in range(n + 1)],
            "layers": [{"heads": int(decoder["num_attention_heads"]), "kv_heads": int(decoder["num_key_value_heads"]),
                        "head_dim": d, **attention[i]} for i in range(n)],
            "vocab": int(genai_config["model"]["vocab_size"]),
            "max_positions": int(genai_config["model"]["context_length"])}
    (out_dir / SPEC_FILE).write_text(json.dumps(spec, indent=2))
    return spec


def _pin_shapes_of_past(stage, whole) -> None:
    """The exporter reads symbolic sizes (batch, sequence) off whichever input carries them. A stage has
    no past, so a Shape of a past K/V tensor reads an empty constant of batch 1 instead (the runtime
    decodes one sequence); input_ids and attention_mask, read for their shape alone, become inputs of
    the stage (the runtime has them). Anything else a stage would need from outside is a failed cut."""
    import numpy as np
    from onnx import numpy_helper

    have = {i.name for i in stage.input} | {i.name for i in stage.initializer} | \
        {o for n in stage.node for o in n.output}
    missing = {t for n in stage.node for t in n.input if t and t not in have}
    originals = {i.name: i for i in whole.input}
    for name in sorted(missing):
        users = [n for n in stage.node if name in n.input]
        if name not in originals or any(n.op_type != "Shape" for n in users):
            raise ExportError(f"cannot cut the decoder graph: a stage needs {name} from outside it")
        if name.startswith("past_key_values."):
            dims = originals[name].type.tensor_type.shape.dim
            shape = [1, dims[1].dim_value, 0, dims[3].dim_value]
            stage.initializer.append(numpy_helper.from_array(np.zeros(shape, np.float32), name))
        else:
            stage.input.append(originals[name])


def _declare(graph, tensors: list[str]) -> None:
    """Value infos for cut tensors that shape inference cannot reach (it stops at contrib ops); the
    extractor needs one for every boundary tensor."""
    from onnx import TensorProto, helper

    known = {v.name for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
    graph.value_info.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
                            for t in dict.fromkeys(tensors) if t not in known)


def _attention_tail(stage, gqa, whole) -> None:
    """q, k, v in the runtime's layout from a GroupQueryAttention node's inputs: split a packed q/k/v, RoPE
    on q and k at position_ids (RotaryEmbedding with the node's cos/sin tables), heads out of the rows."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    attrs = {a.name: helper.get_attribute_value(a) for a in gqa.attribute}
    heads, kv, rotary = int(attrs["num_heads"]), int(attrs["kv_num_heads"]), bool(attrs.get("do_rotary", 0))
    inits = {t.name: t for t in whole.initializer}
    past = next(i for i in whole.input if i.name == gqa.input[3])
    d = past.type.tensor_type.shape.dim[3].dim_value
    graph, nodes = stage.graph, []
    const = {}

    def c(name: str, value) -> str:
        if name not in const:
            const[name] = f"/tail/shape_{name}"
            graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.int64), const[name]))
        return const[name]

    def node(op: str, inputs: list[str], out: str, domain: str = "", **kw) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, domain=domain, **kw))
        return out

    q, k, v = (t for t in gqa.input[:3])
    if not k:  # packed [B, S, (heads + 2 kv) * D]
        parts = ["/tail/q_raw", "/tail/k_raw", "/tail/v_raw"]
        nodes.append(helper.make_node("Split", [q, c("qkv_sizes", [heads * d, kv * d, kv * d])], parts,
                                      name="/tail/split", axis=-1))
        q, k, v = parts
    if rotary:
        for t in {*gqa.input[7:9]}:
            graph.initializer.append(inits[t])
        tables = ["position_ids", gqa.input[7], gqa.input[8]]
        q = node("RotaryEmbedding", [q, *tables], "/tail/q_rope", "com.microsoft", num_heads=heads, interleaved=0)
        k = node("RotaryEmbedding", [k, *tables], "/tail/k_rope", "com.microsoft", num_heads=kv, interleaved=0)
    if not any(i.name == "position_ids" for i in graph.input):  # fed to every layer's stage, NoPE ones too
        graph.input.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, "sequence"]))
    # q: [1, S, kv, g, D] -> [1, kv, g, S, D] -> [1, kv, g*S, D]: a KV head's query heads stacked by rows
    q5 = node("Reshape", [q, c("q5", [0, 0, kv, heads // kv, d])], "/tail/q5")
    q5 = node("Transpose", [q5], "/tail/q5t", perm=[0, 2, 3, 1, 4])
    node("Reshape", [q5, c("q4", [0, kv, -1, d])], "q")
    for t, name in ((k, "k"), (v, "v")):
        node("Transpose", [node("Reshape", [t, c("kv4", [0, 0, kv, d])], f"/tail/{name}4")], name, perm=[0, 2, 1, 3])
    graph.node.extend(nodes)
    keep = [o for o in graph.output if o.name == "x_out"]
    del graph.output[:]
    graph.output.extend(keep)
    for name in ("q", "k", "v"):
        graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))


def _rename(graph, names: dict[str, str]) -> None:
    """The boundary tensors under the names the runtime feeds and reads."""
    for n in graph.node:
        for k, t in enumerate(n.input):
            if t in names:
                n.input[k] = names[t]
        for k, t in enumerate(n.output):
            if t in names:
                n.output[k] = names[t]
    for v in list(graph.input) + list(graph.output):
        v.name = names.get(v.name, v.name)
