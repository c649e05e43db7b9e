"""Building the codec a version asked for, with what the machine that compresses has to offer.

A NOLA codec does its best with a base model: it distills against the original adapter and measures
agreement on held-out texts, which is what the fidelity gate should judge. Base models are found on
the compressing machine by the adapter's base model id: under a models directory, as
`<models_dir>/<org>/<name>` or `<models_dir>/<org>--<name>` (the id with "/" written as "--"), else in
the Hugging Face cache (`compress.base_models.find_base_model`), so a machine that already downloaded
the model uses it with no setting. When none is found, compression falls back to the fits that need
no model, and the record says so.
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
        found = self.find_model(model_id)
        return found[0] if found else None

    def find_model(self, model_id: str | None) -> tuple[Path, str] | None:
        """The local directory of a base model id and where it was found, or None."""
        from adapters.compress.base_models import find_base_model

        return find_base_model(model_id, self.models_dir)

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
    found = env.find_model(base_model_id) if env is not None else None
    if found is None:
        if env is None:
            where = "no codec environment"
        else:
            where = f"models directory {env.models_dir} and " if env.models_dir else ""
            where = f"looked in {where}the Hugging Face cache"
        note["base_model_found"] = False
        note["note"] = f"base model not available ({where}): compressed data-free, gated on the weight error"
        return note
    codec.base_model, note["base_model_source"] = found
    codec.texts, note["calibration"] = env.texts()
    note["base_model_found"] = True
    return note
