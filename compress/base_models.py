"""Base models: where they are on this machine, which class to load them as, and loading them.

An adapter only fits the model class it was trained on: one trained on `BertForSequenceClassification`
names its modules `bert.encoder...` and carries the classifier, while the model as published is often
the headless `BertModel`. The class is chosen the way PEFT's own loaders choose it (peft/auto.py,
`AutoPeftModelFor*` and `MODEL_TYPE_TO_PEFT_MODEL_MAPPING`): the adapter's `task_type` names the Auto
class; an adapter saved without one records the class it was trained on in
`auto_mapping.base_model_class` (PEFT writes it on save); only when neither is there does the base
model's own config decide (its `architectures`). Transformers loads a task class from a headless
checkpoint (and the reverse) by its `base_model_prefix`, so the weights line up either way.

A task head the adapter carries in `modules_to_save` (classifier, score, lm_head, qa_outputs) is
created at the adapter's shape: `num_labels` or the vocabulary size are read from the saved tensors,
checked against the model's parameter shapes on the meta device (nothing is allocated), and the
model is loaded with them; PEFT then overwrites the fresh head with the saved one.

Base models are found by id under a models directory (`<dir>/<org>/<name>` or `<dir>/<org>--<name>`)
or in the Hugging Face cache (`models--<org>--<name>/snapshots/<revision>/`, the revision that
`refs/main` names first), so a machine that already downloaded a model uses it without a setting.

Needs `transformers` (the `hf` extra), imported only when a model is loaded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import CompressError
from .peft_io import KEY_PREFIX, LoraCheckpoint, read_adapter

# PEFT task type -> the transformers Auto class its AutoPeftModelFor* loads the base model with.
TASK_CLASSES = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
}
# Heads PEFT adds to modules_to_save itself for these task types (PeftModelFor*.__init__).
TASK_HEADS = {
    "SEQ_CLS": ("classifier", "score"),
    "TOKEN_CLS": ("classifier", "score"),
    "QUESTION_ANS": ("qa_outputs",),
}
# PEFT imports auto_mapping's parent library only from an allowlist; of those, models come from here.
AUTO_MAPPING_LIBRARY = "transformers"


@dataclass(frozen=True)
class ModelChoice:
    """The class a base model is loaded as, why, and what its head needs to match the adapter."""

    cls: type
    reason: str  # e.g. "task_type SEQ_CLS", "auto_mapping BertForSequenceClassification"
    overrides: dict[str, Any] = field(default_factory=dict)  # config changes, e.g. {"num_labels": 3}
    vocab_size: int | None = None  # resize the token embeddings to this after loading

    @property
    def name(self) -> str:
        return self.cls.__name__


def choose_class(adapter_config: dict[str, Any] | None, base_config) -> tuple[type, str]:
    """The transformers class for a base model with this adapter, and the rule that chose it."""
    import transformers

    adapter_config = adapter_config or {}
    task = adapter_config.get("task_type")
    if task in TASK_CLASSES:
        return getattr(transformers, TASK_CLASSES[task]), f"task_type {task}"
    mapping = adapter_config.get("auto_mapping")
    if isinstance(mapping, dict) and isinstance(mapping.get("base_model_class"), str):
        library = str(mapping.get("parent_library") or AUTO_MAPPING_LIBRARY)
        name = mapping["base_model_class"]
        if library == AUTO_MAPPING_LIBRARY or library.startswith(AUTO_MAPPING_LIBRARY + "."):
            cls = getattr(transformers, name, None)
            if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
                return cls, f"auto_mapping {name}"
    return _from_architectures(base_config)


def _from_architectures(base_config) -> tuple[type, str]:
    import transformers

    archs = list(getattr(base_config, "architectures", None) or [])
    arch = " ".join(archs)
    reason = f"config architectures {arch or '(none)'}"
    if "CausalLM" in arch or "LMHead" in arch:
        return transformers.AutoModelForCausalLM, reason
    if "SequenceClassification" in arch:
        return transformers.AutoModelForSequenceClassification, reason
    if "TokenClassification" in arch:
        return transformers.AutoModelForTokenClassification, reason
    if "QuestionAnswering" in arch:
        return transformers.AutoModelForQuestionAnswering, reason
    if getattr(base_config, "is_encoder_decoder", False) and "ForConditionalGeneration" in arch:
        return transformers.AutoModelForSeq2SeqLM, reason
    return transformers.AutoModel, reason


def _skeleton(cls: type, config) -> torch.nn.Module:
    """The model's module tree and parameter shapes, on the meta device: no memory, no weights read."""
    with torch.device("meta"):
        return cls.from_config(config) if hasattr(cls, "from_config") else cls(config)


_SAVED_WRAPPER = re.compile(r"\.modules_to_save\.[^.]+(?=\.)")
_WRAPPER_PARTS = {"modules_to_save", "original_module"}


def head_tensors(checkpoint: LoraCheckpoint) -> dict[str, torch.Tensor]:
    """The saved tensors of the modules the adapter carries whole (`modules_to_save`), by model key.

    PEFT saves `base_model.model.<module>.<param>` (the wrapper's `modules_to_save.<adapter>` part
    removed; stripped here too where an older writer kept it). With resized embeddings it also saves
    the wrapper's `modules_to_save` / `original_module` copies of them; the plain key stands for
    those. A key belongs to a listed name when a module on its path ends with that name, as in
    PEFT's `_set_trainable`.
    """
    names = list(checkpoint.config.get("modules_to_save") or [])
    names += TASK_HEADS.get(checkpoint.config.get("task_type"), ())
    paired = checkpoint.pair_keys()
    out = {}
    for key, tensor in checkpoint.tensors.items():
        if key in paired or not key.startswith(KEY_PREFIX):
            continue
        path = _SAVED_WRAPPER.sub("", key[len(KEY_PREFIX) :])
        parts = path.split(".")
        if _WRAPPER_PARTS & set(parts):
            continue  # the wrapper's own copies, saved beside the plain key with resized embeddings
        modules = [".".join(parts[:i]) for i in range(1, len(parts))]
        if any(m.endswith(n) for m in modules for n in names if n):
            out[path] = tensor
    return out


def _missing(skeleton: torch.nn.Module, checkpoint: LoraCheckpoint, heads: dict[str, torch.Tensor]):
    modules = {name for name, _ in skeleton.named_modules()}
    params = set(skeleton.state_dict())
    missing = [p.module for p in checkpoint.pairs if p.module not in modules]
    missing += [k for k in heads if k not in params]
    return missing


def _mismatched(skeleton: torch.nn.Module, heads: dict[str, torch.Tensor]) -> dict[str, tuple]:
    shapes = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    return {k: shapes[k] for k, v in heads.items() if k in shapes and tuple(v.shape) != shapes[k]}


def _embedding_modules(skeleton: torch.nn.Module) -> set[str]:
    wanted = {id(m) for m in (skeleton.get_input_embeddings(), skeleton.get_output_embeddings()) if m}
    return {name for name, m in skeleton.named_modules() if id(m) in wanted}


def plan(base_config, checkpoint: LoraCheckpoint | None) -> ModelChoice:
    """Which class to load, with which head size, so that the adapter's modules all exist and fit.

    Raises CompressError (one line) naming a few missing modules and the class tried.
    """
    cls, reason = choose_class(checkpoint.config if checkpoint else None, base_config)
    if checkpoint is None:
        return ModelChoice(cls, reason)
    try:
        skeleton = _skeleton(cls, base_config)
    except (ValueError, KeyError, TypeError) as exc:
        raise CompressError(
            f"cannot build {cls.__name__} ({reason}) from a {type(base_config).__name__}: {_first_line(exc)}"
        ) from None
    name = type(skeleton).__name__
    heads = head_tensors(checkpoint)
    missing = _missing(skeleton, checkpoint, heads)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CompressError(
            f"the adapter's modules are not in the base model loaded as {name} ({reason}): "
            f"{', '.join(missing[:3])}{more}"
        )
    wrong = _mismatched(skeleton, heads)
    if not wrong:
        return ModelChoice(type(skeleton), reason)
    embeddings = _embedding_modules(skeleton)
    vocab = {int(heads[k].shape[0]) for k in wrong if _module_of(k) in embeddings}
    if len(vocab) > 1:
        raise CompressError(f"the adapter's embeddings disagree on the vocabulary size: {sorted(vocab)}")
    overrides: dict[str, Any] = {}
    rest = {k: v for k, v in wrong.items() if _module_of(k) not in embeddings}
    if rest:
        # A classifier-like head: the label count is one of the saved shapes' leading sizes.
        tried = {}
        for labels in sorted({int(heads[k].shape[0]) for k in rest}):
            tried[labels] = _mismatched_rest(
                _skeleton(cls, _with(base_config, num_labels=labels)), heads, embeddings
            )
            if not tried[labels]:
                overrides = {"num_labels": labels}
                break
        else:
            closest = min(tried.values(), key=len)
            key, shape = next(iter(closest.items()))
            raise CompressError(
                f"the adapter's {key} has shape {tuple(heads[key].shape)}, which {name} cannot take "
                f"(it has {shape}; no num_labels fits)"
            )
    return ModelChoice(type(skeleton), reason, overrides, vocab.pop() if vocab else None)


def _module_of(key: str) -> str:
    return key.rsplit(".", 1)[0]


def _mismatched_rest(skeleton, heads, embeddings) -> dict[str, tuple]:
    return {k: v for k, v in _mismatched(skeleton, heads).items() if _module_of(k) not in embeddings}


def _with(config, **changes):
    import copy

    config = copy.deepcopy(config)
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_base_model(
    path: str | Path,
    device: torch.device | str = "cpu",
    adapter: LoraCheckpoint | str | Path | None = None,
):
    """A local transformers model and its tokenizer, loaded as the class `adapter` was trained on.

    Without an adapter the base config's architectures decide (a task head where it names one).
    With one, the class follows the adapter (see the module notes), its head is sized to the
    adapter's, and every module the adapter touches is checked to exist before any weight is read.
    """
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise CompressError(f"{path}: not a model directory (no config.json)")
    if adapter is not None and not isinstance(adapter, LoraCheckpoint):
        adapter = read_adapter(adapter)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CompressError(f"{path}: cannot read the model config ({_first_line(exc)})") from None
    choice = plan(config, adapter)
    try:
        model = choice.cls.from_pretrained(
            path, local_files_only=True, dtype=torch.float32, **choice.overrides
        )
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:  # missing files, unknown config, size mismatch
        raise CompressError(f"{path}: cannot load as {choice.name} ({_first_line(exc)})") from None
    if choice.vocab_size is not None:
        model.resize_token_embeddings(choice.vocab_size)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        # Sequence classifiers of decoder models find each text's last token by the pad id.
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


# --- finding base models on this machine -------------------------------------------------------

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, by the rules of huggingface_hub's constants: HF_HUB_CACHE (or the
    older HUGGINGFACE_HUB_CACHE), else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else
    ~/.cache/huggingface/hub."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if value := os.environ.get(name):
            return _env_path(value)
    if home := os.environ.get("HF_HOME"):
        return _env_path(home) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (_env_path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def _env_path(value: str) -> Path:
    return Path(os.path.expandvars(value)).expanduser()


def find_in_hf_cache(model_id: str, cache: Path | None = None) -> Path | None:
    """The snapshot directory of a hub model id in the cache: the revision `refs/main` names when it
    has the model's config, else the most recently written snapshot that has one."""
    if not _REPO_ID.match(model_id) or ".." in model_id:
        return None
    repo = (cache or hf_hub_cache()) / ("models--" + model_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    revision = _read_ref(repo / "refs" / "main")
    if revision and (snapshots / revision / "config.json").is_file():
        return snapshots / revision
    candidates = [s for s in snapshots.iterdir() if (s / "config.json").is_file()]
    if not candidates:
        return None
    return max(candidates, key=lambda s: ((s / "config.json").stat().st_mtime, s.name))


def _read_ref(path: Path) -> str | None:
    """The revision a ref file names, if it is a plain name (never a path)."""
    try:
        revision = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    plain = revision and "/" not in revision and "\\" not in revision and revision not in (".", "..")
    return revision if plain else None


def find_base_model(model_id: str | None, models_dir: Path | None = None) -> tuple[Path, str] | None:
    """Where a base model id is on this machine, and where that is ("models directory" or "Hugging
    Face cache"); None when it is not here. Ids name folders under the directories, never outside."""
    if not model_id or ".." in Path(model_id).parts or Path(model_id).is_absolute():
        return None
    if models_dir is not None:
        for candidate in (models_dir / model_id, models_dir / model_id.replace("/", "--")):
            if (candidate / "config.json").is_file():
                return candidate, "models directory"
    snapshot = find_in_hf_cache(model_id)
    return (snapshot, "Hugging Face cache") if snapshot is not None else None
