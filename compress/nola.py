"""The NOLA codec: LoRA factors as quantized coefficients over seeded random bases.

The codec object sits on top of compress/: it runs the pipeline (fit, distillation, gate). The
numerics are below it and re-exported here, where callers have always found them: the configuration in
`nola_config.py`, the fits in `nola_fit.py`, encoding and the reading side in `nola_format.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .distill_config import DistillConfig
from .gate import DEFAULT_PREDICTIONS, Gate
from .nola_config import CODES, FITS, WEIGHTINGS, NolaConfig, resolve_device  # noqa: F401 - re-exported
from .nola_fit import (  # noqa: F401 - re-exported
    ModuleFit,
    NolaFit,
    Prepared,
    fit_adapter,
    fit_budget,
    lora_pairs,
    prepare,
    uses_transform,
)
from .nola_format import NolaFormat, encode, encode_decoded  # noqa: F401 - re-exported
from .peft_io import LoraCheckpoint
from .pipeline import run
from .protocol import CompressionReport, Progress
from .stats import InputStats


class NolaCodec(NolaFormat):
    """The NOLA codec: fits, gates and writes an artifact (reading is NolaFormat's)."""

    def __init__(
        self,
        config: NolaConfig | None = None,
        stats: dict[str, InputStats] | None = None,
        *,
        base_model: str | Path | None = None,
        texts: Sequence[str] | None = None,
        distill: Any = None,
        gate: Any = None,
        held_out_predictions: int | None = None,
    ):
        """`stats`: input statistics per module; `base_model` (a local directory) with `texts` enables
        distillation and the held-out measurement; `distill` a DistillConfig; `gate` a gate.Gate (the
        size is then searched up to config.ratio; without one, exactly config.ratio is made)."""
        self.config = config or NolaConfig()
        self.stats = stats or {}
        self.base_model, self.texts, self.distill, self.gate = base_model, texts, distill, gate
        self.held_out_predictions = held_out_predictions or DEFAULT_PREDICTIONS

    @classmethod
    def from_params(cls, **params: Any) -> NolaCodec:
        """Parameters by name: NolaConfig fields, `distill_<field>` for DistillConfig, the gate's
        fields (`min_agreement`, `max_kl`, `max_weight_error`, `confidence`, `min_predictions`) and
        `held_out_predictions`. The gate always applies (its defaults where none is given): a version
        compressed in the registry is never stored ungated."""
        gate_fields = set(Gate.__dataclass_fields__)
        gate = {k: params.pop(k) for k in list(params) if k in gate_fields}
        distill = {
            k.removeprefix("distill_"): params.pop(k) for k in list(params) if k.startswith("distill_")
        }
        held_out = params.pop("held_out_predictions", None)
        try:
            held_out = None if held_out is None else int(held_out)
            gate_obj = Gate(**gate)
            if held_out is not None and held_out < gate_obj.min_predictions:
                raise ValueError(f"held_out_predictions must be at least {gate_obj.min_predictions}")
            return cls(
                NolaConfig(**params),
                distill=DistillConfig(**distill) if distill else None,
                gate=gate_obj,
                held_out_predictions=held_out,
            )
        except TypeError as exc:
            raise ValueError(f"bad NOLA parameters: {exc}") from None

    def compress(
        self,
        checkpoint: LoraCheckpoint,
        out_file: Path,
        *,
        progress: Progress | None = None,
        source_bytes: int | None = None,
    ) -> CompressionReport:
        data, report = run(
            checkpoint,
            self.config,
            stats=self.stats or None,
            base_model=self.base_model,
            texts=self.texts,
            distill_config=self.distill,
            gate=self.gate,
            source_bytes=source_bytes,
            held_out_predictions=self.held_out_predictions,
            progress=progress,
        )
        Path(out_file).write_bytes(data)
        return report
