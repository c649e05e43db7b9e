"""Building the codec a version asked for, with what the machine that compresses has to offer.

A NOLA codec does its best with a base model: it distills against the original adapter and measures
agreement on held-out texts, which is what the fidelity gate should judge. Base models live on the
compressing machine under a models directory, found by the adapter's base model id: either
`<models_dir>/<org>/<name>` or `<models_dir>/<org>--<name>` (the id with "/" written as "--").
When none is found, compression falls back to the fits that need no model, and the record says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CodecEnvironment:
    """What this machine offers a codec beyond the request: base models and calibration texts."""

    models_dir: Path | None = None
    calibration_texts: Path | None = None

    @classmethod
    def from_settings(cls, settings) -> CodecEnvironment:
        return cls(settings.models_dir, settings.calibration_texts)

    def resolve_model(self, model_id: str | None) -> Path | None:
        """The local directory of a base model id, or None."""
        if not model_id or self.models_dir is None:
            return None
        if ".." in Path(model_id).parts or Path(model_id).is_absolute():
            return None  # ids name folders under models_dir, never outside it
        for candidate in (self.models_dir / model_id, self.models_dir / model_id.replace("/", "--")):
            if (candidate / "config.json").is_file():
                return candidate
        return None

    def texts(self) -> tuple[list[str], str]:
        """The calibration texts (topped up from the packaged corpus) and where they came from."""
        from adapters.compress.calibration import calibration_texts

        return calibration_texts(self.calibration_texts)


def attach_base_model(codec, base_model_id: str | None, env: CodecEnvironment | None) -> dict[str, Any]:
    """Give a codec that can use one (NOLA) the base model, where this machine has it, and the
    calibration texts. Returns a note on what it will use (recorded with the version's fidelity)."""
    if not hasattr(codec, "base_model"):
        return {}
    note: dict[str, Any] = {"base_model": base_model_id}
    path = env.resolve_model(base_model_id) if env is not None else None
    if path is None:
        where = env.models_dir if env is not None and env.models_dir else "no models directory configured"
        note["base_model_found"] = False
        note["note"] = f"base model not available ({where}): compressed data-free, gated on the weight error"
        return note
    codec.base_model = path
    codec.texts, note["calibration"] = env.texts()
    note["base_model_found"] = True
    return note
