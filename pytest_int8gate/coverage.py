"""What runs in INT8: the coverage facts of one quantized model, as plain data (no algorithm here).

quantize.py fills a :class:`Coverage` for every Q/DQ model it makes; verdicts and reports read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NotCovered:
    """A quantizable-looking layer left in float, and why (``layer`` is the ONNX node name; a node inside
    an If/Loop/Scan body is named ``outer/attribute/inner``)."""

    layer: str
    op: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"layer": self.layer, "op": self.op, "reason": self.reason}


@dataclass(frozen=True)
class Coverage:
    """How much of a model a Q/DQ model runs in INT8.

    ``quantizable`` counts the quantized layers plus every entry of ``not_covered``. MACs are the
    multiply-accumulates of Conv, ConvTranspose, Gemm, MatMul and recurrent layers per sample, from
    inferred shapes (unknown dimensions count as 1; layers whose shapes are unknown count 0);
    ``int8_mac_share`` is ``int8_macs / total_macs`` (0.0 for a model with no MACs).
    """

    placement: str
    quantized: int
    quantizable: int
    int8_mac_share: float
    int8_macs: int
    total_macs: int
    not_covered: tuple[NotCovered, ...] = ()

    @classmethod
    def of(
        cls,
        placement: str,
        quantized: int,
        int8_macs: int,
        total_macs: int,
        not_covered: tuple[NotCovered, ...],
    ) -> Coverage:
        """The coverage with ``quantizable`` and ``int8_mac_share`` derived from the counts."""
        return cls(
            placement=placement,
            quantized=quantized,
            quantizable=quantized + len(not_covered),
            int8_mac_share=int8_macs / total_macs if total_macs > 0 else 0.0,
            int8_macs=int8_macs,
            total_macs=total_macs,
            not_covered=not_covered,
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "placement": self.placement,
            "quantized": self.quantized,
            "quantizable": self.quantizable,
            "int8_macs": self.int8_macs,
            "total_macs": self.total_macs,
            "int8_mac_share": self.int8_mac_share,
            "not_covered": [entry.as_dict() for entry in self.not_covered],
        }

    def summary(self) -> str:
        """One line: ``12 of 15 layers in INT8 (94.1 % of MACs, tensorrt placement)``."""
        return (
            f"{self.quantized} of {self.quantizable} layers in INT8 "
            f"({100 * self.int8_mac_share:.1f} % of MACs, {self.placement} placement)"
        )
