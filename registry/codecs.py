"""Building the codec a version asked for, with what the machine that compresses has to offer.

A NOLA codec does its best with a base model: it distills against the original adapter and measures
agreement on held-out texts, which is what the fidelity gate should judge. Base models live on the
compressing machine under a models directory, found by the adapter's base model id: either
`<models_dir>/<org>/<name>` or `<models_dir>/<org>--<name>` (the id with "/" written as "--").
When none is found, compression falls back to the fits that need no model, and the record says so.

Workers announce the ids this machine can resolve (`CodecEnvironment.available_models`), so that the
queue hands the jobs that want a base model to the workers that hold it (see workers.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A Hugging Face hub cache folder: models--<org>--<name>/snapshots/<revision>/config.json.
HF_MODEL_PREFIX = "models--"


def uses_base_model(codec: Any) -> bool:
    """Whether a codec can use a base model (it then has a `base_model` attribute to set)."""
    return hasattr(codec, "base_model")


def hf_hub_cache() -> Path:
    """Where the Hugging Face hub keeps downloads: HF_HUB_CACHE, else $HF_HOME/hub, else
    ~/.cache/huggingface/hub (the hub library's own rule)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def hf_cached_models(hub: Path) -> Iterator[str]:
    """The model ids with at least one complete snapshot (a config.json) in a hub cache folder."""
    if not hub.is_dir():
        return
    for folder in hub.glob(f"{HF_MODEL_PREFIX}*"):
        parts = folder.name[len(HF_MODEL_PREFIX) :].split("--")
        if not all(parts):
            continue
        if any((snapshot / "config.json").is_file() for snapshot in (folder / "snapshots").glob("*")):
            yield "/".join(parts)


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

    def _model_ids(self) -> Iterator[str]:
        """Ids that name a folder with a config.json in either models_dir layout, and in the Hugging
        Face hub cache."""
        if self.models_dir is not None and self.models_dir.is_dir():
            for config in self.models_dir.glob("*/config.json"):  # <org>--<name>, or a bare <name>
                yield config.parent.name.replace("--", "/")
            for config in self.models_dir.glob("*/*/config.json"):  # <org>/<name>
                org = config.parent.parent
                if not (org / "config.json").is_file():  # not a model's own subfolder (1_Pooling/)
                    yield f"{org.name}/{config.parent.name}"
        yield from hf_cached_models(hf_hub_cache())

    def available_models(self) -> list[str]:
        """The base model ids this machine can load, sorted: every listed id that `resolve_model`
        resolves (so the list never claims more than compression will find)."""
        return sorted({model for model in self._model_ids() if self.resolve_model(model) is not None})

    def texts(self) -> tuple[list[str], str]:
        from adapters.compress.calibration import default_texts, read_texts

        if self.calibration_texts is not None:
            return read_texts(self.calibration_texts), str(self.calibration_texts)
        return default_texts(), "packaged corpus"


def attach_base_model(codec, base_model_id: str | None, env: CodecEnvironment | None) -> dict[str, Any]:
    """Give a codec that can use one (NOLA) the base model, where this machine has it, and the
    calibration texts. Returns a note on what it will use (recorded with the version's fidelity)."""
    if not uses_base_model(codec):
        return {}
    note: dict[str, Any] = {"base_model": base_model_id}
    path = env.resolve_model(base_model_id) if env is not None else None
    if path is None:
        where = env.models_dir if env is not None and env.models_dir else "no models directory configured"
        note["base_model_found"] = False
        note["note"] = f"base model not available ({where}): fitted without it, gated on weight error"
        return note
    codec.base_model = path
    codec.texts, note["calibration"] = env.texts()
    note["base_model_found"] = True
    return note
