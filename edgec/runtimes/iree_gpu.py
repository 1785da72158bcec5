"""IREE modules on a GPU: Vulkan (phones, desktops, Mesa's software device) or CUDA.

A module runs only on the kind of GPU it was compiled for; one for a real GPU
"runs" on the software device and returns garbage, so the architecture tag the
exporter put in the module picks the device, and no matching device is a
one-line error. Results come back through a staging buffer: Vulkan cannot
import an arbitrary numpy allocation (minImportedHostPointerAlignment).
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgec.errors import BackendError, InputError
from edgec.runtimes import fit_ids

INSTALL = "pip install 'edgec[gpu]'"
SOFTWARE = "llvmpipe"


@dataclass(frozen=True)
class Device:
    api: str
    index: int  # the driver's device id
    name: str
    vendor: str  # nvidia, amd, arm, qualcomm, software, or unknown
    compute_capability: int | None = None  # CUDA: 80 for sm_80

    @property
    def software(self) -> bool:
        return self.vendor == "software"


def _runtime():
    try:
        import iree.runtime as rt
    except ImportError:
        raise InputError(f"the IREE runtime is not installed: {INSTALL}") from None
    return rt


def _keep_shader_cache() -> None:
    """Mesa compiles every shader on first use (minutes for fp16 graphs): keep them between runs."""
    from edgec.cache import cache_root

    if "MESA_SHADER_CACHE_DIR" not in os.environ:
        folder = cache_root() / "mesa-shaders"
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["MESA_SHADER_CACHE_DIR"] = str(folder)


@functools.cache
def devices(api: str) -> tuple[Device, ...]:
    """The GPUs `api` can reach here; none when no driver (or no Vulkan ICD) is installed."""
    rt = _runtime()
    if api == "vulkan":
        _keep_shader_cache()
    try:
        infos = rt.get_driver(api).query_available_devices()
    except (RuntimeError, ValueError):  # VK_ERROR_INCOMPATIBLE_DRIVER, no libcuda, ...
        return ()
    caps = _cuda_capabilities() if api == "cuda" else []
    return tuple(Device(api, int(info["device_id"]), info["name"], vendor_of_device(info["name"]),
                        caps[i] if i < len(caps) else None) for i, info in enumerate(infos))


def vulkan_is_software() -> bool:
    """True when the first Vulkan device is a software one (or there is none): its times are no GPU speed."""
    try:
        found = devices("vulkan")
    except InputError:  # no IREE runtime
        return True
    return not found or found[0].software


def vendor_of_device(name: str) -> str:
    n = name.lower()
    for vendor, marks in (("software", ("llvmpipe", "lavapipe", "swiftshader")),
                          ("nvidia", ("nvidia", "geforce", "quadro", "tesla", "rtx")),
                          ("amd", ("amd", "radeon")), ("arm", ("mali",)), ("qualcomm", ("adreno",))):
        if any(m in n for m in marks):
            return vendor
    return "unknown"


_ARCH_VENDORS = (("software", r"llvmpipe$"),
                 ("nvidia", r"(sm_\d+|turing|ampere|ada|hopper|blackwell|rtx.*|a100|h100)$"),
                 ("amd", r"(gfx\w+|rdna\d?|cdna\d?|rx\w+|mi\d+\w*)$"), ("arm", r"(valhall\d?|mali\w*)$"),
                 ("qualcomm", r"adreno\w*$"))
_CODE_NAMES = {"turing": 75, "ampere": 80, "ada": 89, "hopper": 90, "blackwell": 100}


def vendor_of_arch(arch: str) -> str:
    return next((v for v, pattern in _ARCH_VENDORS if re.fullmatch(pattern, arch.lower())), "unknown")


def runs_on(api: str, arch: str, device: Device) -> bool:
    """A Vulkan module runs on its vendor's devices (and `llvmpipe` on the software device only);
    a CUDA module's PTX runs on its compute capability and newer."""
    if device.api != api:
        return False
    if api == "cuda":
        need = int(arch[3:]) if re.fullmatch(r"sm_\d+", arch) else _CODE_NAMES.get(arch.lower())
        return need is None or device.compute_capability is None or device.compute_capability >= need
    return vendor_of_arch(arch) == device.vendor != "unknown"


def _cuda_capabilities() -> list[int]:
    """Compute capability per CUDA device, from the driver library (attributes 75/76: major/minor)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        if cuda.cuInit(0) != 0:
            return []
        count = ctypes.c_int()
        cuda.cuDeviceGetCount(ctypes.byref(count))
        out = []
        for i in range(count.value):
            major, minor = ctypes.c_int(), ctypes.c_int()
            cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, i)
            cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, i)
            out.append(10 * major.value + minor.value)
        return out
    except OSError:
        return []


def _open(rt, path: Path):
    path = Path(path)
    if not path.is_file():
        raise BackendError(f"no module at {path}; check the path or export with --target gpu")
    try:
        return rt.VmModule.mmap(rt.VmInstance(), str(path))
    except (RuntimeError, ValueError) as e:
        raise BackendError(f"{path} is not a valid IREE module ({_first_line(e)}); re-export it with "
                           "--target gpu") from None


def _tags(module, path: Path) -> dict:
    entry = next((n for n in module.function_names if not n.startswith("__") and "$" not in n), None)
    tags = module.lookup_function(entry).reflection if entry else {}
    if "edgec.arch" not in tags:
        raise BackendError(f"{path} was not written by edgec export --target gpu (no architecture tag): "
                           "re-export it")
    io = json.loads(tags["edgec.io"])
    return {"entry": entry, "api": tags["edgec.api"], "arch": tags["edgec.arch"], "export": tags.get("edgec.export"),
            "inputs": io["inputs"], "outputs": io["outputs"]}


class IreeSession:
    """The module's entry function on the device it was compiled for; numpy in, numpy out."""

    def __init__(self, path: Path, api: str):
        rt = self._rt = _runtime()
        self.path = Path(path)
        module = _open(rt, self.path)
        tags = _tags(module, self.path)
        if tags["api"] != api:
            raise BackendError(f"{self.path.name} is a {tags['api']} module: run it with --runtime "
                               f"iree-{tags['api']}")
        found = devices(api)
        match = [d for d in found if runs_on(api, tags["arch"], d)]
        if not match:
            have = "; ".join(d.name for d in found) or f"no {api} device"
            raise BackendError(f"{self.path.name} was compiled for {api} {tags['arch']} GPUs and this machine has "
                               f"{have}: run it on such a GPU, or export with --gpu-arch for this one")
        self.device_info = match[0]
        self.threads = None  # set by the device
        self.tags = tags
        self.input_names = [n for n, _ in tags["inputs"]]
        self.output_names = [n for n, _ in tags["outputs"]]
        self._dtypes = {n: np.dtype(d) for n, d in tags["inputs"]}
        self.device = rt.get_driver(api).create_device(self.device_info.index)
        config = rt.Config(device=self.device)
        try:
            self._context = rt.SystemContext(vm_modules=[rt.VmModule.mmap(config.vm_instance, str(self.path))],
                                             config=config)
            self._fn = self._context.modules[module.name][tags["entry"]]
        except (RuntimeError, ValueError) as e:
            raise BackendError(f"IREE cannot load {self.path.name} on {self.device_info.name} "
                               f"({_first_line(e)}); re-export it for this GPU") from None

    def device_memory(self) -> float | None:
        """Peak MB the device allocator has held (weights, activations), where IREE keeps statistics."""
        allocator = self.device.allocator
        if not allocator.has_statistics:
            return None
        return round(allocator.statistics["device_bytes_peak"] / 1e6, 1)

    @property
    def export_id(self) -> str | None:
        return self.tags["export"]

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Feeds by name; integer ids are narrowed to the module's width when they fit."""
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise BackendError(f"{self.path.name} needs inputs {self.input_names}, got {sorted(feed)}")
        args = [np.ascontiguousarray(fit_ids(np.asarray(feed[n]), self._dtypes[n], n)) for n in self.input_names]
        try:
            outs = self._fn(*args)
        except (RuntimeError, ValueError) as e:
            got = [f"{a.shape} {a.dtype}" for a in args]
            raise BackendError(f"{self.path.name} refused inputs {got} ({_first_line(e)})") from None
        outs = outs if isinstance(outs, (tuple, list)) else [outs]
        return [self._to_host(o) for o in outs]

    def _to_host(self, array) -> np.ndarray:
        """Device -> staging buffer the host may map -> numpy."""
        rt, view = self._rt, array._buffer_view
        source = view.get_buffer()
        staging = self.device.allocator.allocate_buffer(
            memory_type=int(rt.MemoryType.HOST_LOCAL | rt.MemoryType.DEVICE_VISIBLE),
            allowed_usage=int(rt.BufferUsage.TRANSFER_TARGET | rt.BufferUsage.MAPPING_SCOPED),
            allocation_size=source.byte_length())
        sem = self.device.create_semaphore(0)
        self.device.queue_copy(source, staging, wait_semaphores=rt.HalFence.create_at(sem, 0),
                               signal_semaphores=rt.HalFence.create_at(sem, 1))
        rt.HalFence.create_at(sem, 1).wait()
        dtype = rt.HalElementType.map_to_dtype(view.element_type)
        return np.array(staging.map().asarray(view.shape, dtype))


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def load(path: Path) -> IreeSession:
    return IreeSession(path, "vulkan")


def load_cuda(path: Path) -> IreeSession:
    return IreeSession(path, "cuda")


def load_lm(path: Path, tokenizer: Path | None, info: dict, api: str = "vulkan"):
    """A chunked decoder step (the npu target's static graph, in float) driven by the same host loop."""
    from edgec.exporters.formats import CHUNKED_KIND
    from edgec.runtimes.htp_llm import ChunkedLM
    from edgec.runtimes.tokens import TokenBytes

    contract = info.get("engine", info)
    if contract.get("kind") != CHUNKED_KIND:
        raise InputError(f"{path} comes without its decoder contract: export it again with --target gpu")
    if tokenizer is not None and not Path(tokenizer).is_file():
        raise InputError(f"tokenizer not found: {tokenizer}; export the bundle again")
    session = IreeSession(Path(path), api)
    names = session.output_names
    return ChunkedLM(lambda feeds: dict(zip(names, session.run(feeds))), contract,
                     eos=info.get("eos_token_ids", contract.get("eos_token_ids", ())),
                     token_bytes=TokenBytes(Path(tokenizer)) if tokenizer else None)


def load_lm_cuda(path: Path, tokenizer: Path | None, info: dict):
    return load_lm(path, tokenizer, info, "cuda")
