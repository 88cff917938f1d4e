"""Execution paths for a frozen network: ONNX Runtime (fast) or eager PyTorch (fallback).

Measured on a 2-core AVX2 CPU, EfficientNet-Lite0 at 224 px, batch 32: eager ~17
images/s, channels-last ~28, ONNX Runtime ~95 with features equal to 1e-5. ONNX
Runtime fuses batch-norm into convolutions and runs tuned kernels, which eager PyTorch
does not on CPU, so the exported graph is the default. The export is cached beside the
features and is checked against eager PyTorch once per exported file, ONNX Runtime
version and CPU; on any failure or mismatch we fall back to eager, so the features
never silently change.

TF-"same" padding (timm's ``Conv2dSame``, every ``tf_*`` network) is exported as
asymmetric ``pads`` on the ONNX ``Conv`` itself, computed for the one input size the
graph accepts. Traced as it runs in PyTorch, it became a ``Pad`` whose amounts were
computed from the input shape at run time: ONNX Runtime could then neither fuse it
into the convolution nor keep the blocked (NCHWc) layout across it, and the network
ran ~1.5x slower (benchmarks/RESULTS.md, foundation-extraction).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferkit.features.extract import RUNTIMES  # noqa: F401  (defined where loading a model needs no torch)
from transferkit.outputs import write_bytes_atomic

log = logging.getLogger(__name__)

# Largest allowed deviation between the fast path and eager PyTorch (features are O(1)).
MATCH_TOLERANCE = 1e-4
# Part of the exported file's cache name: a new export recipe must not reuse old files.
EXPORT_FORMAT = 2  # 2: TF-"same" padding as static Conv pads


def cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class EagerRuntime:
    """Plain PyTorch in inference mode, channels-last memory layout (faster on CPU)."""

    name = "eager"

    def __init__(self, module: nn.Module, device: str = "cpu"):
        self.device = torch.device(device)
        self.module = module.eval().to(self.device)
        if self.device.type == "cpu":
            self.module = self.module.to(memory_format=torch.channels_last)
        self.n_batches = 0

    def __call__(self, images: torch.Tensor) -> list[np.ndarray]:
        """One array per output of the module (one per tapped layer)."""
        self.n_batches += 1
        with torch.inference_mode():
            images = images.to(self.device)
            if self.device.type == "cpu":
                images = images.contiguous(memory_format=torch.channels_last)
            outputs = self.module(images)
            if isinstance(outputs, torch.Tensor):
                outputs = (outputs,)
            return [output.float().cpu().numpy() for output in outputs]


class OnnxRuntime:
    """The module exported to ONNX once (cached on disk) and run by ONNX Runtime.

    ``threads`` is the session's intra-op thread count (default: every core). With
    ``threads=1`` the session is meant to be called from several threads at once (ONNX
    Runtime's ``run`` is thread-safe), each running one batch on its own core: that
    keeps every core busy through decoding too, and never spin-waits on a busy machine.
    """

    name = "onnx"

    def __init__(self, module: nn.Module, input_shape: tuple[int, int, int], onnx_path: Path,
                 threads: int | None = None):
        import onnxruntime

        self.onnx_path = Path(onnx_path)
        self.threads = threads or cpu_threads()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = None
        if self.onnx_path.exists():
            try:
                self.session = open_onnx_session(self.onnx_path, options)
            except Exception as exc:  # damaged or replaced: the cache's file, so redo it
                log.warning("cached ONNX model %s is unusable (%s); exporting it again.",
                            self.onnx_path, _first_line(exc))
        if self.session is None:
            export_onnx(module, input_shape, self.onnx_path)
            self.session = open_onnx_session(self.onnx_path, options)
        self.input_name = self.session.get_inputs()[0].name
        self.n_batches = 0

    def __call__(self, images) -> list[np.ndarray]:
        """``images``: a float32 tensor or array (batch, C, H, W)."""
        self.n_batches += 1
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        array = np.ascontiguousarray(images, dtype=np.float32)
        return self.session.run(None, {self.input_name: array})

    def verification_stamp(self) -> dict:
        """What the agreement with eager PyTorch depends on besides the graph itself."""
        import onnxruntime

        return {"onnx_sha256": hashlib.sha256(self.onnx_path.read_bytes()).hexdigest(),
                "onnxruntime": onnxruntime.__version__, "cpu": _cpu_signature()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else 'no details'}"


def open_onnx_session(path: Path, options):
    """An ONNX Runtime session over the model file ``path`` (one ``export_onnx`` wrote).

    An ONNX file is a graph of standard operators: loading it runs no Python. What it
    could still do is name external data files, which ONNX Runtime would read from
    wherever they point; our exports never have any, so a file that does is refused.
    The model goes to ONNX Runtime as the bytes just checked, not by name.
    """
    import onnx
    import onnxruntime
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    data = Path(path).read_bytes()
    model = onnx.load_model_from_string(data)
    if any(uses_external_data(tensor) for tensor in _get_all_tensors(model)):
        raise ValueError(f"{path} refers to external data files, which transferkit never writes")
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _cpu_signature() -> str:
    """The CPU model and instruction sets: ONNX Runtime picks its kernels by them, so a
    cache folder shared between machines re-checks the export on each kind of CPU."""
    lines = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith(("model name", "flags")):
                    lines.append(line.strip())
                if len(lines) == 2:
                    break
    except OSError:
        pass
    text = "\n".join(lines) or f"{platform.machine()} {platform.processor()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _SamePaddedConv(torch.autograd.Function):
    """A convolution with fixed, possibly asymmetric padding that exports as one ONNX Conv
    (PyTorch's ``conv2d`` only pads symmetrically, so it runs as pad + conv here)."""

    @staticmethod
    def forward(ctx, images, weight, bias, stride, pads, dilation, groups):
        return torch.nn.functional.conv2d(torch.nn.functional.pad(images, pads), weight, bias,
                                          stride, 0, dilation, groups)

    @staticmethod
    def symbolic(graph, images, weight, bias, stride, pads, dilation, groups):
        left, right, top, bottom = pads
        inputs = [images, weight] if bias is None else [images, weight, bias]
        return graph.op("Conv", *inputs, strides_i=list(stride), dilations_i=list(dilation),
                        pads_i=[top, left, bottom, right], group_i=groups)


@contextlib.contextmanager
def static_same_padding(module: nn.Module, input_shape: tuple[int, int, int]):
    """Within the block, timm's dynamic TF-"same" convolutions in ``module`` pad by the
    fixed amounts that ``input_shape`` implies (what export needs); restored after."""
    try:
        from timm.layers.conv2d_same import Conv2dSame
        from timm.layers.padding import pad_same_arg
    except ImportError:  # no timm: no such layers
        yield
        return
    convolutions = [m for m in module.modules() if isinstance(m, Conv2dSame)]
    if not convolutions:
        yield
        return
    sizes: dict[nn.Module, list[int]] = {}

    def record(layer, inputs):
        sizes[layer] = list(inputs[0].shape[-2:])

    hooks = [layer.register_forward_pre_hook(record) for layer in convolutions]
    try:
        with torch.inference_mode():
            module.eval()(torch.zeros((1, *input_shape)))
    finally:
        for hook in hooks:
            hook.remove()
    for layer in convolutions:
        if layer not in sizes:  # not on the path to the outputs
            continue
        pads = tuple(int(p) for p in pad_same_arg(sizes[layer], list(layer.weight.shape[-2:]),
                                                  list(layer.stride), list(layer.dilation)))

        def forward(images, layer=layer, pads=pads):
            return _SamePaddedConv.apply(images, layer.weight, layer.bias, tuple(layer.stride),
                                         pads, tuple(layer.dilation), layer.groups)

        layer.forward = forward  # an instance attribute: shadows the class's forward
    try:
        yield
    finally:
        for layer in convolutions:
            layer.__dict__.pop("forward", None)


def export_onnx(module: nn.Module, input_shape: tuple[int, int, int], path: Path) -> None:
    """Export with a dynamic batch axis; written atomically so a crash leaves no stub."""
    import io

    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros((2, *input_shape))
    with torch.inference_mode():
        outputs = module.eval()(dummy)
    n_outputs = 1 if isinstance(outputs, torch.Tensor) else len(outputs)
    names = [f"features_{i}" for i in range(n_outputs)]
    buffer = io.BytesIO()
    with warnings.catch_warnings(), static_same_padding(module, input_shape):
        # The TorchScript exporter is deprecated in favour of torch.export, but it is
        # 10x quicker here and handles timm's TF-"same" padding; it still works.
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (dummy,), buffer, input_names=["images"],
                          output_names=names, opset_version=17, dynamo=False,
                          dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}})
    write_bytes_atomic(path, buffer.getvalue())


def max_deviation(fast, eager: EagerRuntime, input_shape, seed: int = 0) -> float:
    generator = torch.Generator().manual_seed(seed)
    probe = torch.randn((3, *input_shape), generator=generator)
    return max(float(np.abs(a - b).max()) for a, b in zip(fast(probe), eager(probe)))


def _stamp_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name + ".verified.json")


def _already_verified(fast: OnnxRuntime) -> bool:
    try:
        saved = json.loads(_stamp_path(fast.onnx_path).read_text())
        return saved.get("stamp") == fast.verification_stamp()
    except (OSError, ValueError, AttributeError):
        return False


def _remember_verified(fast: OnnxRuntime, deviation: float) -> None:
    try:
        write_bytes_atomic(_stamp_path(fast.onnx_path), json.dumps(
            {"stamp": fast.verification_stamp(), "max_deviation": deviation}).encode())
    except OSError as exc:  # only a shortcut: the next run checks again
        log.warning("cannot record the ONNX check in %s (%s).", fast.onnx_path.parent, exc)


def make_runtime(module: nn.Module, input_shape: tuple[int, int, int], runtime: str = "auto",
                 onnx_path: Path | None = None, device: str = "cpu", threads: int | None = None):
    """Return the fastest runtime that reproduces eager features within tolerance.

    ``runtime``: ``"auto"`` (ONNX if it matches eager, else eager), ``"onnx"`` (error if
    unavailable), or ``"eager"``. ``threads``: ONNX Runtime's intra-op threads (default
    every core; 1 for callers that run several batches at once). The comparison with
    eager PyTorch runs once per exported file, ONNX Runtime version and CPU, and is
    remembered beside the file.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be 'auto', 'onnx' or 'eager', got {runtime!r}")
    if runtime == "eager" or device != "cpu":
        return EagerRuntime(module, device=device)
    try:
        if onnx_path is None:
            raise RuntimeError("no folder to keep the exported model in")
        fast = OnnxRuntime(module, input_shape, onnx_path, threads=threads)
        if not _already_verified(fast):
            deviation = max_deviation(fast, EagerRuntime(module, device=device), input_shape)
            if deviation > MATCH_TOLERANCE:
                onnx_path.unlink(missing_ok=True)
                _stamp_path(onnx_path).unlink(missing_ok=True)
                raise RuntimeError(f"ONNX features differ from eager by {deviation:.2e}")
            _remember_verified(fast, deviation)
        fast.n_batches = 0
        return fast
    except Exception as exc:  # any exporter/runtime failure: eager is always correct
        if runtime == "onnx":
            from transferkit.errors import TransferkitError

            raise TransferkitError(f"runtime 'onnx' is not usable for this network "
                                   f"({_first_line(exc)}); use "
                                   "runtime 'auto' or 'eager'.") from exc
        log.warning("ONNX Runtime path unavailable (%s); using eager PyTorch.", exc)
        return EagerRuntime(module, device=device)
