"""Building the codec a version asked for, with what the machine that compresses has to offer.

A NOLA codec does its best with a base model: it distills against the original adapter and measures
agreement on held-out texts, which is what the fidelity gate should judge. Base models are found on
the compressing machine by the adapter's base model id: under a models directory, as
`<models_dir>/<org>/<name>` or `<models_dir>/<org>--<name>` (the id with "/" written as "--"), else in
the Hugging Face cache (`compress.base_models.find_base_model`), so a machine that already downloaded
the model uses it with no setting. When none is found, compression falls back to the fits that need
no model, and the record says so.

Workers announce the ids this machine can resolve (`CodecEnvironment.available_models`), so that the
queue hands the jobs that want a base model to the workers that hold it (see workers.py).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A Hugging Face hub cache folder: models--<org>--<name>/snapshots/<revision>/config.json.
HF_MODEL_PREFIX = "models--"


def import_codec_modules(modules: list[str]) -> None:
    """Import modules that register extra codecs (ADAPTERS_EXTRA_CODECS)."""
    for module in modules:
        importlib.import_module(module)


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
        found = self.find_model(model_id)
        return found[0] if found else None

    def find_model(self, model_id: str | None) -> tuple[Path, str] | None:
        """The local directory of a base model id and where it was found, or None."""
        from adapters.compress.base_models import find_base_model

        return find_base_model(model_id, self.models_dir)

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
        """The calibration texts (topped up from the packaged corpus) and where they came from."""
        from adapters.compress.calibration import calibration_texts

        return calibration_texts(self.calibration_texts)


def attach_base_model(codec, base_model_id: str | None, env: CodecEnvironment | None) -> dict[str, Any]:
    """Give a codec that can use one (NOLA) the base model, where this machine has it, and the
    calibration texts. Returns a note on what it will use (recorded with the version's fidelity)."""
    if not uses_base_model(codec):
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
