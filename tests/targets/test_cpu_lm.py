"""The cpu target for a decoder: an engine whose format cannot describe the model is left out with its reason."""

from types import SimpleNamespace

from edgec.models.decoder import Decoder
from edgec.targets.cpu_lm import _genai


def test_genai_is_left_out_with_its_reason_where_layers_keep_different_kv_heads(tmp_path):
    """A pruned decoder whose layers kept different numbers of KV groups: genai_config.json has one
    num_key_value_heads, so the bundle ships its .pte and GGUF and the report says why there is no ONNX."""
    layers = [dict(heads=4, kv_heads=kv, head_dim=8, intermediate=32) for kv in (2, 1)]
    module = Decoder(vocab=16, hidden=32, layers=layers, rms_eps=1e-6, rope_theta=1e4, max_pos=32,
                     tie_embeddings=False)
    job = SimpleNamespace(recipe=SimpleNamespace(weights="int4", genai_threads=None))
    artifacts, float_onnx, note = _genai(job, module, tmp_path, 32)
    assert artifacts == [] and float_onnx is None
    assert note == ("not written: ONNX Runtime GenAI needs the same number of KV heads in every layer, this "
                    "decoder has [1, 2]: prune KV heads uniformly for this runtime")
    assert not list(tmp_path.iterdir())  # nothing half-written
