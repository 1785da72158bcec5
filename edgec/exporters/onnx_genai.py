"""A decoder bundle that ONNX Runtime GenAI runs as is: model.onnx, genai_config.json and the tokenizer.

Two graphs of the same decoder. "fused" (the default; `onnx_genai_fused`) is
written on ONNX Runtime's fused CPU kernels, its KV cache a buffer GenAI
allocates once and GroupQueryAttention writes in place. "plain" is traced
from torch: GenAI feeds the whole KV history back in each step and takes back
the grown one (`past_present_share_buffer` false), so the graph only
concatenates and every op is a standard one; decoders GroupQueryAttention
cannot express get it, and it is what the tiered KV cache cuts into stages.
Both score whole sequences under plain ONNX Runtime with a zero-length past.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import torch

from edgec.errors import ExportError, InputError
from edgec.exporters.artifact import Artifact
from edgec.exporters.onnx_genai_fused import fused_decoder, unfusable
from edgec.models.decoder import Decoder

OPSET = 21
# decoder types onnxruntime-genai 0.18 accepts in genai_config.json, of the families edgec rebuilds
GENAI_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "smollm3", "granite"}
WEIGHT_BITS = {"float": None, "int8": 8, "int4": 4}
BLOCK = 32  # MatMulNBits block: one scale per 32 input channels
# MatMulNBits computes with int8 activations (the kernels llama.cpp's Q4_0 x Q8_0 dot products match); 1.5x
# the decode speed of float activations on the 100M bench config
ACCURACY_LEVEL = 4
GRAPHS = ("fused", "plain")
MODEL_FILE = "model.onnx"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class GenaiStep(torch.nn.Module):
    """One GenAI step: the new tokens against past + new keys, with genai's input and output names."""

    def __init__(self, module: Decoder):
        super().__init__()
        self.module = module

    def forward(self, input_ids, attention_mask, position_ids, *past):
        m = self.module
        # computed at the positions, not gathered from a [max_pos, D] table: long contexts would put megabytes
        # of table into the graph (and into every stage cut from it)
        cos, sin = m.rope(position_ids)
        cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # [tables, B, 1, S, D]: per-row positions (left padding)
        # a key's position counts the real slots before it; a query sees the keys at or before its position
        # (within a sliding window where the layer has one) that the attention mask keeps
        keep = attention_mask.to(torch.bool)[:, None, :]
        k_pos = attention_mask.cumsum(-1) - 1
        masks = [(seen & keep).unsqueeze(1) for seen in m.masks(position_ids, k_pos)]  # [B, 1, S, T] each
        presents = []

        def grow(i, k, v):
            k, v = torch.cat([past[2 * i], k], dim=2), torch.cat([past[2 * i + 1], v], dim=2)
            presents.extend((k, v))
            return k, v
        return (m.run(input_ids, cos, sin, masks, grow), *presents)


def io_names(n_layers: int) -> tuple[list[str], list[str]]:
    """GenAI's default names: inputs then outputs, keys before values per layer."""
    kv = [f"{{}}.{i}.{part}" for i in range(n_layers) for part in ("key", "value")]
    return (["input_ids", "attention_mask", "position_ids"] + [n.format("past_key_values") for n in kv],
            ["logits"] + [n.format("present") for n in kv])


def export_genai(module: Decoder, hf_config, tokenizer_dir: Path, out_dir: Path,
                 weights: str = "float", context: int | None = None, threads: int | None = None,
                 graph: str = "fused") -> Artifact:
    """Write model.onnx (+ .data), genai_config.json and the tokenizer files into `out_dir`;
    `context` (default: the model's positions) is the longest sequence GenAI will run; `threads`, when
    given, is written into genai_config.json (else the runtime picks, so a bigger device uses its cores);
    `graph` "fused" falls back to "plain" where the decoder needs it (the manifest says why)."""
    if weights not in WEIGHT_BITS:
        raise InputError(f"unknown weights '{weights}' for ONNX Runtime GenAI: use one of {', '.join(WEIGHT_BITS)}")
    if graph not in GRAPHS:
        raise InputError(f"unknown graph '{graph}' for ONNX Runtime GenAI: use one of {', '.join(GRAPHS)}")
    if (why := refusal(module)) is not None:
        raise ExportError(why)
    tokenizer_dir, out_dir = Path(tokenizer_dir), Path(out_dir)
    missing = [f for f in TOKENIZER_FILES if not (tokenizer_dir / f).is_file()]
    if missing:
        raise InputError(f"{tokenizer_dir} has no {', '.join(missing)}: ONNX Runtime GenAI needs an HF fast tokenizer")
    out_dir.mkdir(parents=True, exist_ok=True)
    path, context = out_dir / MODEL_FILE, context or module.max_pos
    why_plain = unfusable(module) if graph == "fused" else "asked for"
    if why_plain is None:
        _save(fused_decoder(module, context), path)
    else:
        _export(module, path)
    if WEIGHT_BITS[weights]:
        _quantize(path, path, WEIGHT_BITS[weights])
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, out_dir / name)
    config = genai_config(module, hf_config, context, threads, shared_cache=why_plain is None)
    (out_dir / "genai_config.json").write_text(json.dumps(config, indent=2))
    graph = {"graph": "fused"} if why_plain is None else {"graph": "plain", "why_plain": why_plain}
    return Artifact(path, "onnx", "ort-genai", manifest=_engine(weights, module.attention(), graph))


def refusal(module: Decoder) -> str | None:
    """Why genai_config.json cannot describe this decoder, or None."""
    kv_heads = {layer.attn.kv_heads for layer in module.layers}
    if len(kv_heads) != 1:
        return (f"ONNX Runtime GenAI needs the same number of KV heads in every layer, this decoder has "
                f"{sorted(kv_heads)}: prune KV heads uniformly for this runtime")
    return None


def _save(model, path: Path) -> None:
    import onnx

    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save(model, path, save_as_external_data=True, location=data.name, size_threshold=1024)


CACHES = {"fused": ("past_key_values.%d.key/value in, present.%d.key/value out: one buffer [batch, kv_heads, "
                    "context, head_dim] GroupQueryAttention writes in place (past_present_share_buffer); "
                    "attention_mask covers the tokens so far"),
          "plain": ("past_key_values.%d.key/value in, present.%d.key/value = past + new out, "
                    "[batch, kv_heads, sequence, head_dim]; attention_mask covers past + new")}


def _engine(weights: str, attention: list[dict], graph: dict) -> dict:
    """`attention`: each layer's score scale, soft cap and window, for a runtime that cuts the graph at its
    attention cores and computes attention itself (the tiered KV cache)."""
    return {"engine": {"reader": "ONNX Runtime GenAI: og.Model(the folder holding this file)",
                       "config": "genai_config.json", "weights": weights, **graph, "attention": attention,
                       "cache": CACHES[graph["graph"]]}}


def quantize_genai(bundle: Artifact, out_dir: Path, weights: str) -> Artifact:
    """The float bundle of `bundle` (export_genai's artifact) with int8 or int4 weights, in `out_dir`:
    variants without re-tracing."""
    if WEIGHT_BITS.get(weights) is None:
        raise InputError(f"cannot quantize to '{weights}': use int8 or int4")
    engine = bundle.manifest["engine"]
    graph = {k: engine[k] for k in ("graph", "why_plain") if k in engine}
    bundle, out_dir = bundle.path.parent, Path(out_dir)
    if not (bundle / "genai_config.json").is_file():
        raise InputError(f"{bundle} is no ONNX Runtime GenAI bundle (no genai_config.json); export it first")
    out_dir.mkdir(parents=True, exist_ok=True)
    _quantize(bundle / MODEL_FILE, out_dir / MODEL_FILE, WEIGHT_BITS[weights])
    for name in ("genai_config.json", *TOKENIZER_FILES):
        shutil.copyfile(bundle / name, out_dir / name)
    return Artifact(out_dir / MODEL_FILE, "onnx", "ort-genai", manifest=_engine(weights, engine["attention"], graph))


def _example(module: Decoder, batch: int = 2, seq: int = 3, past: int = 4) -> tuple[torch.Tensor, ...]:
    layer = module.layers[0].attn
    ids = torch.randint(0, module.embed.num_embeddings, (batch, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    positions = torch.arange(past, past + seq).repeat(batch, 1)
    kv = [torch.zeros(batch, l.attn.kv_heads, past, layer.head_dim) for l in module.layers for _ in "kv"]
    return (ids, mask, positions, *kv)


def _export(module: Decoder, path: Path) -> None:
    """Dynamo export; the mask length is its own axis (past + seq as Dim arithmetic is rejected)."""
    # names, not Dims: torch.onnx makes them Dim.DYNAMIC, which takes the reshape guards on `sequence`
    # that a strict Dim rejects, and names the graph's axes after them
    batch, seq, past, total = "batch", "sequence", "past_sequence", "total_sequence"
    inputs, outputs = io_names(len(module.layers))
    shapes = ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq},
              ({0: batch, 2: past},) * (len(inputs) - 3))  # *past is one tuple argument
    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(GenaiStep(module), _example(module), dynamo=True, opset_version=OPSET,
                                        input_names=inputs, output_names=outputs,
                                        dynamic_shapes=shapes, verbose=False)
            program.save(path, external_data=True)
    except Exception as e:  # the exporter raises many types; all mean the same to the user
        cause = e
        while cause.__cause__ is not None:  # torch.onnx wraps torch.export's error in a generic one
            cause = cause.__cause__
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise ExportError(f"ONNX export for ONNX Runtime GenAI failed ({type(cause).__name__}: {first})") from e
    finally:
        module.train(was_training)


def _quantize(src: Path, path: Path, bits: int) -> None:
    """Weight-only MatMulNBits (symmetric, blocks of 32) on every constant MatMul weight, lm_head included
    (tied or not)."""
    import onnx

    root, level = logging.getLogger(), logging.getLogger().level
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits
    root.setLevel(level)  # importing it calls logging.basicConfig(level=INFO)

    logger = logging.getLogger(nbits.__name__)  # it logs every node at INFO
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        model = onnx.load(src)
        _fold_transposed_weights(model)
        tied = _tied_tables(model)
        # int4 takes the token table too (GatherBlockQuantized, blocks along the hidden axis; ORT has no
        # 8-bit Gather): on tinylm 6.4 -> 3.5 MB at the same held-out perplexity
        ops = ("MatMul", "Gather") if bits == 4 else ("MatMul",)
        quantizer = nbits.MatMulNBitsQuantizer(model, bits=bits, block_size=BLOCK, is_symmetric=True,
                                               accuracy_level=ACCURACY_LEVEL, op_types_to_quantize=ops,
                                               quant_axes=(("MatMul", 0), ("Gather", 1)))
        quantizer.process()
    except Exception as e:  # the quantizer asserts and raises plain errors on graphs it cannot take
        raise ExportError(f"MatMulNBits {bits}-bit quantization failed ({type(e).__name__}: {e}); "
                          "export with weights='float'") from e
    finally:
        logger.setLevel(level)
    if bits == 4:
        _share_tied_table(quantizer.model.model, tied)
    _save(quantizer.model.model, path)


def _tied_tables(model) -> list[tuple[str, str]]:
    """(token table, output head weight) initializer pairs that hold the same matrix (the head transposed)."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    tables = {n.input[0] for n in graph.node if n.op_type == "Gather" and n.input[0] in inits}
    heads = {n.input[1] for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits}
    pairs = []
    for t in tables:
        table = numpy_helper.to_array(inits[t])
        for h in heads:
            if list(inits[h].dims) == list(table.shape[::-1]) and np.array_equal(numpy_helper.to_array(inits[h]).T, table):
                pairs.append((t, h))
    return pairs


def _share_tied_table(model, pairs: list[tuple[str, str]]) -> None:
    """A tied token table, quantized for the lookup (GatherBlockQuantized) and for the output head
    (MatMulNBits), is the same blocks in the same order: the lookup reads the head's bytes (bits=4 over
    uint8, as ONNX Runtime GenAI's builder does) and the file keeps one copy."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    for table, head in pairs:
        gather = next((n for n in graph.node if n.op_type == "GatherBlockQuantized" and n.input[0] == f"{table}_Q4"),
                      None)
        matmul = next((n for n in graph.node if n.op_type == "MatMulNBits" and n.input[1] == f"{head}_Q4"), None)
        if gather is None or matmul is None or len(gather.input) > 3 or len(matmul.input) > 3:
            continue
        old = [inits[gather.input[0]], inits[gather.input[2]]]
        rows, cols = old[0].dims
        shape = numpy_helper.from_array(np.array([rows, cols // 2], np.int64), f"{table}_from_head_shape")
        graph.initializer.append(shape)
        reshaped = f"{table}_from_head"
        graph.node.insert(list(graph.node).index(gather),
                          helper.make_node("Reshape", [matmul.input[1], shape.name], [reshaped], name=reshaped))
        gather.input[0], gather.input[2] = reshaped, matmul.input[2]
        gather.attribute.append(helper.make_attribute("bits", 4))
        for t in old:
            graph.initializer.remove(t)


def _fold_transposed_weights(model) -> None:
    """MatMul(x, Transpose(W)) -> MatMul(x, W^T as a constant): a tied lm_head reads the token table
    through a Transpose, which hides it from the weight quantizer and keeps it float."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        t = producer.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if t is None or t.op_type != "Transpose" or t.input[0] not in inits:
            continue
        perm = next((list(a.ints) for a in t.attribute if a.name == "perm"), None)
        weight = numpy_helper.to_array(inits[t.input[0]])
        if weight.ndim != 2 or perm not in (None, [1, 0]):
            continue
        name = f"{t.input[0]}_transposed"
        if name not in inits:
            inits[name] = numpy_helper.from_array(weight.T.copy(), name)
            graph.initializer.append(inits[name])
        node.input[1] = name
    used = {i for n in graph.node for i in n.input}
    dead = [n for n in graph.node if n.op_type == "Transpose" and not set(n.output) & (used | {o.name for o in graph.output})]
    for n in dead:
        graph.node.remove(n)


def genai_config(module: Decoder, hf_config, context: int, threads: int | None = None,
                 shared_cache: bool = False) -> dict:
    """The genai_config.json GenAI 0.18 reads, as its model builder writes it; `shared_cache` for the fused
    graph (one KV buffer, positions from the attention mask), else for the plain concatenating one."""
    attn, eos = module.layers[0].attn, _token_id(hf_config, "eos_token_id")
    positions = {} if shared_cache else {"position_ids": "position_ids"}
    return {
        "model": {
            "bos_token_id": _token_id(hf_config, "bos_token_id"),
            "eos_token_id": eos,  # one id or a list: GenAI takes both
            "pad_token_id": _token_id(hf_config, "pad_token_id", eos[0] if isinstance(eos, list) else eos),
            "context_length": context,
            "type": genai_type(hf_config.model_type),
            "vocab_size": module.embed.num_embeddings,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": [],
                                    **({"intra_op_num_threads": threads} if threads else {})},
                "filename": MODEL_FILE,
                "head_size": attn.head_dim,
                "hidden_size": module.embed.embedding_dim,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", **positions,
                           "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": attn.heads,
                "num_hidden_layers": len(module.layers),
                "num_key_value_heads": attn.kv_heads,
            },
        },
        "search": {"do_sample": False, "max_length": context, "min_length": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": shared_cache, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 0, "top_p": 1.0, "early_stopping": True,
                   "length_penalty": 1.0, "no_repeat_ngram_size": 0, "diversity_penalty": 0.0},
    }


def genai_type(model_type: str) -> str:
    """The model type GenAI 0.18 is told: the family's own where GenAI knows it, else "llama" (the graph's
    inputs and outputs are the same for every family, and GenAI refuses a type it has no entry for)."""
    return model_type if model_type in GENAI_TYPES else "llama"


def _token_id(hf_config, name: str, default=None):
    value = getattr(hf_config, name, None)
    if value is None:
        value = default
    if value is None:
        raise ExportError(f"the model config has no {name}: ONNX Runtime GenAI needs it in genai_config.json")
    return value
