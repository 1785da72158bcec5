"""A recipe: the settings of one export, loadable from a JSON or YAML file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from edgec.calibration.plan import PrecisionPlan
from edgec.errors import InputError
from edgec.passes.prune import PruneConfig
from edgec.passes.smooth import SmoothConfig
from edgec.passes.token_budget import TokenBudgetConfig

_PASS_CONFIGS = {"plan": PrecisionPlan, "smooth": SmoothConfig, "prune": PruneConfig,
                 "token_budget": TokenBudgetConfig}


WEIGHTS = ("int4", "int8", "float")
GGUF_QUANTS = ("Q4_0", "Q8_0", "Q4_K_M", "F16", "F32")
PRECISIONS = ("fp32", "fp16")
GPU_APIS = ("vulkan", "cuda")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    seq_len: int | None = None  # text models' static sequence length; None: 128
    calib_samples: int = 32
    # pruning's statistics and refit gain from more data than quantization ranges need: on MiniLM
    # at ratio 0.3, 32 sentences keep pooled cosine 0.93, 160 keep 0.95 (bench/prune_minilm.py)
    prune_calib_samples: int = 160
    eval_samples: int | None = None  # held-out samples for accuracy on real runtimes; None: all of them
    # held-out samples on the HTP simulator (seconds per run); None: the task's default, 32
    # sentences or 100 images, enough for the headline figure to mean something
    htp_eval_samples: int | None = None
    bench_runs: int = 20
    plan: PrecisionPlan | None = None  # None: the target's own plan
    # SmoothQuant-style outlier smoothing before static quantization; off by default:
    # it measured no gain on the zoo models (bench/smoothing.py), it helps pre-LN
    # models whose LayerNorm outputs carry outlier channels.
    smooth: SmoothConfig | None = None
    prune: PruneConfig | None = None  # structured pruning (heads, MLP channels), before quantization
    token_budget: TokenBudgetConfig | None = None  # static token dropping after an early block
    compare_quantized_only: bool = True  # also build the model without pruning/token dropping
    # language models: the static KV-cache length (None: the model's positions, at most 512), the npu
    # graph's prefill chunk (None: 32) and the cpu artifacts' weights ("int4", "int8" or "float")
    context: int | None = None
    prefill_chunk: int | None = None
    weights: str = "int4"
    # threads ONNX Runtime GenAI uses, written into genai_config.json; None: left to the runtime (all cores)
    genai_threads: int | None = None
    # the cpu target's model.gguf for llama.cpp: its quantization (Q4_0, Q8_0, Q4_K_M, F16, F32), None for none
    gguf: str | None = "Q4_0"
    # the gpu target: the API, the architectures to compile for (None: phone and desktop defaults)
    # and the precision inside the modules; inputs and outputs keep their dtypes
    gpu_api: str = "vulkan"
    gpu_arch: tuple[str, ...] | None = None
    precision: str = "fp32"
    # the npu target: SoCs (sm8650, ...) to precompile a QNN context binary for, beside the QDQ graph
    soc: tuple[str, ...] | None = None

    def __post_init__(self):
        for name in ("seq_len", "calib_samples", "prune_calib_samples", "eval_samples", "htp_eval_samples",
                     "bench_runs", "context", "prefill_chunk", "genai_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gguf is not None and self.gguf not in GGUF_QUANTS:
            raise ValueError(f"gguf '{self.gguf}' is not one of {', '.join(GGUF_QUANTS)} (or null for no GGUF)")
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights '{self.weights}' is not one of {', '.join(WEIGHTS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision '{self.precision}' is not one of {', '.join(PRECISIONS)} "
                             "(int8 does not compile on the GPU route)")
        if self.gpu_api not in GPU_APIS:
            raise ValueError(f"gpu_api '{self.gpu_api}' is not one of {', '.join(GPU_APIS)}")
        if self.gpu_arch is not None:
            archs = (self.gpu_arch,) if isinstance(self.gpu_arch, str) else tuple(self.gpu_arch)
            if not archs or not all(isinstance(a, str) and a.strip() for a in archs):
                raise ValueError("gpu_arch must name at least one architecture")
            object.__setattr__(self, "gpu_arch", tuple(a.strip() for a in archs))
        if self.soc is not None:
            from edgec.exporters.qnn_context import soc_names

            object.__setattr__(self, "soc", soc_names(self.soc))

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in _PASS_CONFIGS:
            d[name] = getattr(self, name).to_dict() if getattr(self, name) else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown recipe keys {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        for name, config in _PASS_CONFIGS.items():
            if d.get(name) is not None:
                d[name] = config.from_dict(d[name])
        return cls(**d)

    def with_overrides(self, **kw) -> "Recipe":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


def load_recipe(path: Path | None) -> Recipe:
    if path is None:
        return Recipe()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"recipe file {path} does not exist: check the path")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("the top level must be a mapping")
        return Recipe.from_dict(data)
    except (ValueError, TypeError) as e:
        raise InputError(f"recipe {path} is invalid: {str(e).splitlines()[0]}") from None
    except Exception as e:  # yaml's own errors
        raise InputError(f"recipe {path} cannot be parsed: {str(e).splitlines()[0]}") from None
