"""Float decoder artifacts reproduce transformers' greedy tokens, engine by engine.

    python -m bench.llm_equivalence [--models tinylm,llama,qwen2] [--prompts 5] [--new-tokens 64]

For the trained `tinylm` and for seeded Llama and Qwen2 configs (which catch
Llama-only assumptions), the float ONNX (ONNX Runtime GenAI's og.Generator)
and the float static-cache `.pte` (ExecuTorch's TextLLMRunner) generate
greedily after held-out prompts; every new token must equal the one
transformers' `generate` picks.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from edgec.toolchain.quiet import quiet_libraries

CONTEXT = 256


def _seeded(out: Path, kind: str) -> Path:
    import torch
    import transformers

    from edgec.calibration import prose
    from edgec.zoo.train_tinylm import save_hf_dir, train_tokenizer

    tok = train_tokenizer(prose.split("calib"), vocab=2048)
    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[kind]
    config = cls[0](vocab_size=2048, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                    num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512,
                    bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = cls[1](config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
            elif p.dim() == 2:  # sharper logits: an argmax decided by rounding noise tests nothing
                p.mul_(4.0)
    save_hf_dir(model, tok, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tinylm,llama,qwen2")
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()
    quiet_libraries()
    from edgec.calibration import prose
    from edgec.exporters.executorch_llm import export_llm_pte
    from edgec.exporters.onnx_genai import export_genai
    from edgec.models.hf_decoder import from_hf_decoder
    from edgec.runtimes import runtime
    from edgec.runtimes.llm import Sampling
    from edgec.runtimes.tokens import TokenBytes
    from edgec.runtimes.torch_lm import load_hf_lm, load_lm
    from edgec.toolchain.zoo import ZOO

    rows, failures = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.models.split(","):
            src = ZOO[name].locate() if name in ZOO else _seeded(tmp / name, name)
            hf = load_hf_lm(src)
            module = from_hf_decoder(hf)
            info = {"bos_token_id": hf.config.bos_token_id, "eos_token_ids": [hf.config.eos_token_id],
                    "pad_token_id": hf.config.pad_token_id, "context_length": CONTEXT,
                    "vocab_size": hf.config.vocab_size}
            tok = src / "tokenizer.json"
            engines = {
                "ort-genai": export_genai(module, hf.config, src, tmp / f"{name}-onnx", weights="float",
                                          context=CONTEXT),
                "executorch": export_llm_pte(module, hf.config, tmp / f"{name}.pte", CONTEXT, weights="float")}
            reference = load_lm(src)
            sessions = {rt: runtime(rt).load_lm(a.path, tok, info) for rt, a in engines.items()}
            encode = TokenBytes(tok).encode
            for i, text in enumerate(prose.split("heldout")[:args.prompts]):
                ids = encode(text)[:32]
                want = reference.generate(ids, args.new_tokens, Sampling())
                for rt, s in sessions.items():
                    got = s.generate(ids, args.new_tokens, Sampling())
                    same = (got.tokens == want.tokens) if got.tokens else (got.pieces == want.pieces)
                    first = next((j for j, (a, b) in enumerate(zip(got.tokens or got.pieces,
                                                                   want.tokens or want.pieces)) if a != b), None)
                    rows.append((name, i, rt, len(want.tokens), same, first))
                    failures += not same
    print(f"{'model':<8}{'prompt':>7}  {'engine':<12}{'tokens':>7}  {'identical':<10}{'first difference':>17}")
    print("-" * 63)
    for name, i, rt, n, same, first in rows:
        print(f"{name:<8}{i:>7}  {rt:<12}{n:>7}  {'yes' if same else 'NO':<10}{'' if first is None else first:>17}")
    print(f"\n{len(rows) - failures}/{len(rows)} generations identical to transformers' greedy tokens")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
