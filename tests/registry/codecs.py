"""Codecs that exist only for tests."""

from __future__ import annotations

from typing import ClassVar

from adapters.compress import stfile
from adapters.compress.codec import CompressionReport, config_metadata, register_codec


@register_codec
class GateCodec:
    """A stand-in for a lossy codec with a fidelity gate: stores the tensors unchanged under its own
    format name, and passes the gate only when asked to."""

    name: ClassVar[str] = "test-gate"
    format_version: ClassVar[int] = 1

    def __init__(self, passes: bool = True) -> None:
        self.passes = passes

    @classmethod
    def from_params(cls, passes: bool = True) -> GateCodec:
        return cls(passes)

    def compress(self, checkpoint, out_file, *, progress=None, source_bytes=None) -> CompressionReport:
        size = stfile.write(out_file, checkpoint.tensors, config_metadata(self, checkpoint.config))
        return CompressionReport(
            codec=self.name,
            source_bytes=checkpoint.nbytes(),
            artifact_bytes=size,
            params={"passes": self.passes},
            fidelity={
                "gate": {
                    "passed": self.passes,
                    "basis": "max_rel_error",
                    "reason": "within thresholds" if self.passes else "max_rel_error inf > 0.1",
                },
                "gate_passed": self.passes,
                "max_rel_error": 0.0 if self.passes else float("inf"),
            },
        )

    def decode(self, tensors, metadata, config):
        return tensors
