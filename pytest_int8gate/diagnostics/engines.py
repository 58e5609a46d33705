"""How the engines behave when run: determinism (two runs, bit for bit) and CPU fidelity (ONNX Runtime's
fused int8 kernels against simulated Q/DQ).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..backends.base import Runner
from ..data import Feeds
from ..evaluate import classification_view
from ..results import Finding
from .limits import FIDELITY_AGREEMENT, FIDELITY_COSINE, FIDELITY_ERROR_RATIO

if TYPE_CHECKING:
    pass


def check_determinism(runner: Runner, batches: Sequence[Feeds], *, what: str = "INT8 engine") -> Finding:
    """Run every batch twice: info when the outputs are bit-exact, a warning naming the output otherwise."""
    differing: dict[str, float] = {}
    samples = 0
    for feeds in batches:
        first, second = runner.run(feeds), runner.run(feeds)
        samples += int(next(iter(feeds.values())).shape[0])
        for name, value in first.items():
            again = second[name]
            if value.shape != again.shape or value.tobytes() != again.tobytes():
                diff = (
                    float(np.nanmax(np.abs(value.astype(np.float64) - again.astype(np.float64))))
                    if value.shape == again.shape and value.size
                    else math.inf
                )
                differing[name] = max(differing.get(name, 0.0), diff)
    if not differing:
        return Finding(
            "determinism",
            "info",
            f"the {what} is bit-exact: two runs on the same {samples} samples gave identical outputs.",
            "Nothing to fix.",
            {"samples": samples, "bit_exact": True},
        )
    worst = max(differing, key=lambda k: differing[k])
    return Finding(
        "determinism",
        "warning",
        f"the {what} is not deterministic: two runs on the same {samples} samples differ in output {worst!r} "
        f"by up to {differing[worst]:.3g}, so the gate's numbers can change from run to run.",
        "Remove what varies between runs: random ops left in the graph, non-deterministic kernels or "
        "plugins, TensorRT tactics chosen anew on every build (use a timing cache, and gate the engine you "
        "deploy).",
        {"samples": samples, "bit_exact": False, "max_abs_difference": differing},
    )


# ---- 10. CPU fidelity -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fidelity:
    """How closely fused and simulated INT8 agree on one output, against how far INT8 is from FP32."""

    samples: int
    cosine_mean: float
    cosine_min: float
    top1_agreement: float | None
    #: ||fused - simulated|| / ||simulated - fp32|| over the samples: the CPU's deviation measured in units
    #: of the quantization error itself (inf when simulated equals FP32 exactly and fused does not).
    error_ratio: float


def measure_fidelity(
    simulated: Runner, fused: Runner, fp32: Runner, batches: Iterable[Feeds], output: str
) -> Fidelity:
    """Fused against simulated INT8 (and both against FP32) on ``output``, each runner run on ``batches``."""
    return fidelity_of(
        (simulated.run(feeds)[output], fused.run(feeds)[output], fp32.run(feeds)[output]) for feeds in batches
    )


def fidelity_of(outputs: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Fidelity:
    """Fused against simulated INT8 from (simulated, fused, FP32) values of one output, batch by batch
    (samples on axis 0): they may be computed or read from the evaluation's stored outputs."""
    cosines: list[np.ndarray] = []
    same = total = 0
    classes = True
    deviation = quantization = 0.0
    for sim, fus, fp32 in outputs:
        n = sim.shape[0]
        x, y = sim.reshape(n, -1).astype(np.float64), fus.reshape(n, -1).astype(np.float64)
        reference = fp32.reshape(n, -1).astype(np.float64)
        deviation += float(np.sum((y - x) ** 2))
        quantization += float(np.sum((x - reference) ** 2))
        norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
        dots = np.einsum("ij,ij->i", x, y)
        cosines.append(
            np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(dots == 0, 1.0, 0.0))
        )
        view_sim, view_fus = classification_view(sim), classification_view(fus)
        if view_sim is None or view_fus is None:
            classes = False
        else:
            same += int(np.sum(view_sim.argmax(axis=1) == view_fus.argmax(axis=1)))
        total += n
    cos = np.concatenate(cosines) if cosines else np.ones(0)
    unquantizable = math.inf if deviation > 0 else 0.0  # simulated INT8 equals FP32 exactly
    ratio = math.sqrt(deviation / quantization) if quantization > 0 else unquantizable
    return Fidelity(
        samples=total,
        cosine_mean=float(cos.mean()) if cos.size else 1.0,
        cosine_min=float(cos.min()) if cos.size else 1.0,
        top1_agreement=same / total if classes and total else None,
        error_ratio=ratio,
    )


def check_cpu_fidelity(fidelity: Fidelity, *, device: str) -> Finding | None:
    """Warning when ONNX Runtime's fused int8 kernels and simulated Q/DQ disagree on this CPU: the outputs
    differ (cosine or top-1) AND the difference is a sizeable part of INT8's own error against FP32 (so
    rounding-tie differences on a model INT8 has already destroyed do not count)."""
    agree_ok = fidelity.top1_agreement is None or fidelity.top1_agreement >= FIDELITY_AGREEMENT
    if (fidelity.cosine_mean >= FIDELITY_COSINE and agree_ok) or fidelity.error_ratio <= FIDELITY_ERROR_RATIO:
        return None
    top1 = "" if fidelity.top1_agreement is None else f", top-1 agreement {fidelity.top1_agreement:.1%}"
    return Finding(
        "cpu-fidelity",
        "warning",
        f"ONNX Runtime's fused int8 kernels disagree with simulated Q/DQ on this CPU ({device}): mean cosine "
        f"{fidelity.cosine_mean:.4f}{top1}, a difference {fidelity.error_ratio:.3g}x the INT8 error itself, "
        f"over {fidelity.samples} samples. Simulated Q/DQ computes what TensorRT computes and predicts it; "
        "fused kernels can saturate on CPUs without VNNI.",
        "Judge with --int8-ort-mode simulated (the default) to predict TensorRT; use fused numbers only for "
        "deployment on this CPU with ONNX Runtime itself, or on a CPU with VNNI.",
        {
            "device": device,
            "samples": fidelity.samples,
            "cosine_mean": fidelity.cosine_mean,
            "cosine_min": fidelity.cosine_min,
            "top1_agreement": fidelity.top1_agreement,
            "error_ratio": fidelity.error_ratio,
        },
    )
