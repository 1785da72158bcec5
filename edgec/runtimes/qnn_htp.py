"""Qualcomm's HTP NPU through ONNX Runtime's QNN plugin EP, and which nodes it takes.

On x86-64 the onnxruntime-qnn wheel runs the HTP backend in simulation, so a model
that loads here has passed the backend's op validation and graph finalisation.
Sessions never fall back to the CPU: a model either runs whole on the HTP or `load`
refuses it, and `coverage` says which nodes are to blame.

Both sessions skip ORT's graph optimisations: with fallback disabled the QNN EP
compiles every node itself, and the graph stays the one the model file holds, so
node names and counts in `coverage` are the model's own.

Sessions name no SoC (the simulator compiles for HTP v68) unless they build or
load a QNN context for one. Two traits of the simulator follow. It runs one HTP
generation per process, that of the session created last; a session for another
fails with QNN error 1100, so `QnnSession` creates itself again first
(milliseconds for a context, a compile for a QDQ graph). And once a session has
named a SoC, later ones that name none take that SoC's op checks (not its
numerics): a Gelu that v68 cannot build then builds. From then on, sessions of
a QDQ graph name SM8350 (v68), whose checks and MiniLM outputs match a fresh
process's; a context keeps the SoC it was compiled for.
"""

import functools
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import onnxruntime_qnn

from edgec.errors import BackendError
from edgec.runtimes.native import silenced
from edgec.runtimes.htp_rewrites import rewrite_for
from edgec.runtimes.ort_cpu import (ORT_ERRORS, OrtSession, cannot_load, check_model_file, first_line,
                                    is_bad_model)

EP_NAME = onnxruntime_qnn.EP_NAME
_LOG_ID = "edgec-htp-coverage"
_COMPATIBILITY = f"ep_compatibility_info.{EP_NAME}"  # an EPContext model's target, in its metadata
_DEFAULT = "no SoC named"
_active = [_DEFAULT]  # which compiled target the simulator runs now: the last session created sets it
_soc_named = [False]  # whether a session of this process has named a SoC
_V68 = {"soc_model": "30", "htp_arch": "68"}  # SM8350

# Lines of the QNN EP's verbose session log (LogNodeSupport and the HTP backend's errors).
_UNIT = re.compile(r"Validation (PASSED|FAILED) for \d+ nodes in OrtNodeUnit \((\S+)\) :(.*)", re.S)
_MEMBER = re.compile(r"Operator type: (\S+) Node name: (.*?) Node index: \d+")
_REASON = re.compile(r"REASON : (.*)", re.S)
_CANNOT_CREATE = re.compile(r"could not create op: (\S+)")
_GENERATED = re.compile(r'"(.+)" generated: could not create op')


@functools.cache
def _devices() -> list:
    """Registers the plugin EP once per process (ORT refuses a second registration)."""
    # The plugin's logger keeps the default severity in force when it registers. At
    # verbose, coverage() hears graph-finalisation errors through its callback; a
    # silent callback keeps the registration quiet, then ORT's default comes back.
    ort.set_default_logger_callback(lambda *message: None, 0)
    try:
        ort.register_execution_provider_library(EP_NAME, onnxruntime_qnn.get_library_path())
    except ORT_ERRORS as e:
        if "already registered" not in str(e):
            raise BackendError(f"cannot register the QNN EP ({first_line(e)}); "
                               "reinstall onnxruntime-qnn matching onnxruntime") from e
    finally:
        _restore_default_logger()
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    if not devices:
        raise BackendError("the QNN EP offers no device; reinstall onnxruntime-qnn matching onnxruntime")
    return devices


def _restore_default_logger() -> None:
    ort.set_default_logger_callback(None)
    ort.set_default_logger_severity(3)  # errors only: edgec reports failures as exceptions


def _options(strict: bool, context: bool = False, **provider: str) -> ort.SessionOptions:
    if _soc_named[0] and not context and "soc_model" not in provider:  # a context brings its own SoC
        provider = {**_V68, **provider}
    options = ort.SessionOptions()
    # By default the EP leaves Q of graph inputs and DQ of graph outputs to the CPU
    # whenever fallback is allowed; "0" makes the probe place them as a strict session does.
    options.add_provider_for_devices(_devices(), {"backend_path": onnxruntime_qnn.get_qnn_htp_path(),
                                                  "offload_graph_io_quantization": "0", **provider})
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if strict:
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return options


def _created(session: ort.InferenceSession, target: str = _DEFAULT) -> ort.InferenceSession:
    """Note what the simulator runs now: an EPContext model names its own target."""
    _active[0] = session.get_modelmeta().custom_metadata_map.get(_COMPATIBILITY, target)
    _soc_named[0] = _soc_named[0] or _active[0] != _DEFAULT
    return session


class QnnSession(OrtSession):
    """An ORT session on the HTP that is created again when the simulator moved to another target."""

    def __init__(self, make: Callable[[], ort.InferenceSession]):
        self._make = make
        super().__init__(_created(make()))
        self._target = _active[0]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if _active[0] != self._target:
            self._session = None  # the old graph goes before the new one is built
            self._session = _created(self._make())
        return super().run(feeds)


def load(path: Path) -> QnnSession:
    """A session whose whole graph runs on the HTP, or BackendError."""
    check_model_file(path)

    context = _soc_named[0] and _is_context(path)

    def make() -> ort.InferenceSession:
        with silenced(1):
            return ort.InferenceSession(str(path), _options(strict=True, context=context))
    try:
        return QnnSession(make)
    except ORT_ERRORS as e:
        if is_bad_model(e):
            raise cannot_load(path, e) from e
        raise BackendError(f"{path} does not run fully on the HTP ({first_line(e)}); "
                           "qnn_htp.coverage() names the rejected nodes and their rewrites") from e


def _is_context(path: Path) -> bool:
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # protobuf decode errors: ORT says what is wrong when it loads the file
        return False
    return any(n.op_type == "EPContext" for n in graph.node)


@dataclass(frozen=True)
class Compiled:
    path: Path  # the EPContext model written
    seconds: float  # creating the session that compiled it
    outputs: list[list[np.ndarray]] | None  # the compiled graph's, per feed: what the context must reproduce
    not_run: str = ""  # why `outputs` is None


def compile_context(path: Path, out: Path, soc_model: int, htp_arch: int,
                    feeds: list[dict[str, np.ndarray]]) -> Compiled:
    """Compile `path` for one SoC's HTP into an EPContext model `out`, its binary beside it (`<stem>_qnn.bin`),
    and run the compiled graph on `feeds` where the simulator here runs that HTP.

    Graph I/O quantization stays inside the binary: the context model is one
    EPContext node, nothing for an app's CPU to do. Where only a prepare-only
    compile works, the model goes to a `prepared` folder beside `out`.
    """
    check_model_file(path)
    target = f"soc_model {soc_model}"

    def compile_to(out: Path, **provider: str) -> ort.InferenceSession:
        out.parent.mkdir(parents=True, exist_ok=True)
        _soc_named[0] = True  # even a failed attempt may leave the SoC set
        options = _options(strict=True, soc_model=str(soc_model), htp_arch=str(htp_arch), **provider)
        for key, value in {"ep.context_enable": "1", "ep.context_file_path": str(out),
                           "ep.context_embed_mode": "0"}.items():
            options.add_session_config_entry(key, value)
        with silenced(1):
            return ort.InferenceSession(str(path), options)
    cannot_run = f"the HTP simulator here cannot run HTP v{htp_arch} ({{}})"
    t0 = time.perf_counter()
    try:
        session = _created(compile_to(out), target)
    except ORT_ERRORS as e:
        if is_bad_model(e):
            raise cannot_load(path, e) from e
        session, reason = None, cannot_run.format(first_line(e))
    if session is not None:
        seconds = time.perf_counter() - t0
        try:
            return Compiled(out, seconds, [session.run(None, f) for f in feeds])
        except ORT_ERRORS as e:
            return Compiled(out, seconds, None, cannot_run.format(first_line(e)))
    prepared = out.parent / "prepared" / out.name
    t0 = time.perf_counter()
    try:
        compile_to(prepared, enable_htp_prepare_only="1")
    except ORT_ERRORS as e:
        raise BackendError(f"QNN cannot compile {path} for {target} (HTP v{htp_arch}): {first_line(e)}") from e
    return Compiled(prepared, time.perf_counter() - t0, None, reason)


@dataclass(frozen=True)
class UnsupportedNode:
    name: str
    op_type: str
    reason: str  # QNN's words
    rewrite: str  # what to change in the graph, from htp_rewrites


@dataclass(frozen=True)
class HtpCoverage:
    """How much of a model the HTP takes.

    `total_nodes` counts the model file's top-level nodes, QuantizeLinear and
    DequantizeLinear included, Constant not (ORT turns it into an initializer);
    `htp_nodes` those the QNN EP placed on the HTP in a session with CPU fallback.
    When even that session fails at graph finalisation, `htp_nodes` counts the nodes
    that passed validation minus those the error names, or 0 if it names none, so a
    graph that validates but does not build is never 1.0. `fraction` is their ratio.
    `runs_fully` is the verdict of the session `load()` creates, `error` its reason.
    """

    total_nodes: int
    htp_nodes: int
    runs_fully: bool
    error: str | None = None
    unsupported: list[UnsupportedNode] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return self.htp_nodes / self.total_nodes if self.total_nodes else 0.0

    def to_dict(self) -> dict:
        return {"total_nodes": self.total_nodes, "htp_nodes": self.htp_nodes,
                "fraction": round(self.fraction, 4), "runs_fully": self.runs_fully,
                "error": self.error, "unsupported_ops": [asdict(u) for u in self.unsupported]}


def coverage(path: Path) -> HtpCoverage:
    """Which nodes the HTP takes, why it rejects the rest, and whether the whole graph runs.

    Builds two sessions: one with CPU fallback and verbose logs, which says where
    each node went and why, and the strict one `load()` builds. While the first is
    built, ORT's default logger goes to a Python callback (not thread-safe with
    other sessions being built); afterwards it is back at ORT's default, warnings.
    """
    check_model_file(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf decode errors have no common base with OSError
        raise cannot_load(path, e) from e
    nodes = [n for n in model.graph.node if n.op_type != "Constant"]
    names = [n.name for n in nodes]
    source: str | bytes = str(path)
    if "" in names or len(set(names)) < len(names):
        source = _with_unique_names(path, nodes)
        names = [n.name for n in nodes]
    placed, messages, probe_error = _probe(source)
    strict_error = _strict_error(source, path)
    if strict_error is None:  # a strict session exists only when every node runs on the HTP
        placed = set(names)

    verdicts = _verdicts(messages)
    finalise = {k: v for k, v in _finalise_failures(messages).items() if k in set(names)}
    if placed is not None:
        on_htp = placed
    elif finalise:
        on_htp = {name for name, v in verdicts.items() if v.accepted} - finalise.keys()
    else:
        on_htp = set()
    by_name = {n.name: n for n in nodes}
    dtypes = _dtypes(model)
    unsupported = []
    for node in nodes:
        if node.name in on_htp:
            continue
        verdict = verdicts.get(node.name, _Verdict(None, node.op_type, "", (node.name,)))
        if node.name in finalise:
            reason = finalise[node.name]
        elif verdict.accepted is False:
            reason = verdict.reason or "rejected by the QNN EP"
        elif placed is None:
            continue  # finalisation failed without naming it: `error` says why
        elif verdict.accepted is None:
            reason = "the QNN EP did not take it"
        elif node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            reason = "passed validation, but the QNN EP takes no partition of lone Q/DQ nodes"
        else:
            reason = "passed validation, but the QNN EP left it on the CPU"
        unit = [by_name[m] for m in verdict.members if m in by_name] or [node]
        io = " ".join(dtypes.get(t, "?") for m in unit for t in [*m.input, *m.output] if t)
        unsupported.append(UnsupportedNode(node.name, node.op_type, reason,
                                           rewrite_for(verdict.unit_op, f"{reason} | dtypes: {io}")))
    return HtpCoverage(total_nodes=len(nodes), htp_nodes=sum(n in on_htp for n in names),
                       runs_fully=strict_error is None, error=strict_error or probe_error,
                       unsupported=unsupported)


def _probe(source: str | bytes) -> tuple[set[str] | None, list[str], str | None]:
    """A session with CPU fallback and verbose logs: the names on the HTP, the log, the error.

    The QNN EP logs through ORT's logger, so a Python logging callback sees each
    node's verdict; the placement itself comes from ORT's graph assignment info.
    """
    messages: list[str] = []
    options = _options(strict=False)
    options.log_severity_level = 0
    options.logid = _LOG_ID
    options.intra_op_num_threads = 1  # worker threads would log past the callback, to stderr
    options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    # Node verdicts come through the session's logger, graph finalisation errors
    # through the default one ("Default"), and only at verbose severity.
    ort.set_default_logger_callback(
        lambda severity, category, logid, location, message:
            messages.append(message) if logid in (_LOG_ID, "Default") else None, 0)
    try:
        with silenced(1):
            session = _created(ort.InferenceSession(source, options))
    except ORT_ERRORS as e:
        return None, messages, first_line(e)
    finally:
        _restore_default_logger()
    placed = {node.name for sub in session.get_provider_graph_assignment_info()
              if sub.ep_name == EP_NAME for node in sub.get_nodes()}
    return placed, messages, None


def _strict_error(source: str | bytes, path: Path) -> str | None:
    """Why the session `load()` builds fails, or None when it runs.

    With fallback allowed the EP's partitioner may leave a lone node (a Transpose
    between Q/DQ) on the CPU that the HTP runs when it must; the strict session,
    which only exists when every node is on the HTP, is the verdict a device gets.
    """
    options = _options(strict=True)
    options.log_severity_level = 4  # the failure comes back as the exception's text
    try:
        with silenced(1):
            _created(ort.InferenceSession(source, options))
    except ORT_ERRORS as e:
        if is_bad_model(e):
            raise cannot_load(path, e) from e
        return first_line(e)
    return None


@dataclass(frozen=True)
class _Verdict:
    """The QNN EP judges a node unit (an op with its DQ inputs and Q outputs) as one."""

    accepted: bool | None  # None: no verdict logged
    unit_op: str
    reason: str
    members: tuple[str, ...]


def _verdicts(messages: list[str]) -> dict[str, _Verdict]:
    """Node name -> the verdict on its unit; the last GetCapability pass wins."""
    out = {}
    for message in messages:
        unit = _UNIT.search(message)
        if not unit:
            continue
        reason = _REASON.search(unit.group(3))
        members = tuple(name for _, name in _MEMBER.findall(unit.group(3)))
        verdict = _Verdict(unit.group(1) == "PASSED", unit.group(2),
                           reason.group(1).strip() if reason else "", members)
        out.update(dict.fromkeys(members, verdict))
    return out


def _finalise_failures(messages: list[str]) -> dict[str, str]:
    """Node name -> the QNN op that graph finalisation could not create for it."""
    out, op = {}, "an op"
    for message in messages:
        if hit := _CANNOT_CREATE.search(message):
            op = hit.group(1)
        if hit := _GENERATED.search(message):
            out[hit.group(1)] = f"passed validation, but graph finalisation could not create {op}"
    return out


def _dtypes(model: onnx.ModelProto) -> dict[str, str]:
    """Tensor name -> element type ("float", "int64"), as far as shape inference knows."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except (onnx.shape_inference.InferenceError, ValueError):
        inferred = model.graph
    out = {t.name: onnx.TensorProto.DataType.Name(t.data_type).lower() for t in inferred.initializer}
    for v in [*inferred.input, *inferred.output, *inferred.value_info]:
        if v.type.HasField("tensor_type"):
            out[v.name] = onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower()
    return out


def _with_unique_names(path: Path, nodes: list[onnx.NodeProto]) -> bytes:
    """Names unnamed or clashing nodes `<op>_<index>` so each verdict maps to one node."""
    model = onnx.load(str(path))  # with external data: the probe loads from bytes
    taken = {n.name for n in nodes}
    seen: set[str] = set()
    compute = [n for n in model.graph.node if n.op_type != "Constant"]
    for i, (node, mirror) in enumerate(zip(compute, nodes)):
        if not node.name or node.name in seen:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = mirror.name = name
            taken.add(name)
        seen.add(node.name)
    return model.SerializeToString()
