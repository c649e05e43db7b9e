"""The registry's limits on what a push, a yank or a lookup may carry: one set for every interface.

The embedded registry (push.py, service.py), the API's request models and the remote client all check these,
so a value one of them accepts the others accept too. Limits on the adapter's own files (config
size, safetensors header, tensor count, patterns) are the compression library's: compress/limits.py.
"""

from __future__ import annotations

import unicodedata

from .errors import InvalidName, InvalidRequest

# A base model is a Hugging Face id (at most 96 + 1 + 96 characters) or a local path, which can be
# long. It is stored and indexed (with the adapter's name) in a PostgreSQL B-tree, whose entries
# must stay under 2,704 bytes: the limit is in bytes of UTF-8 (2,048 ASCII characters).
MAX_BASE_MODEL_BYTES = 2048
MAX_DESCRIPTION_LENGTH = 4096
MAX_YANK_REASON_LENGTH = 1000
MAX_TAGS = 64
MAX_ALIASES = 64
MAX_CODEC_NAME_LENGTH = 32
# Version labels (labels.py): keys like `dataset`, `train.run-id`, `eval/accuracy`.
MAX_LABELS = 64
MAX_LABEL_KEY_LENGTH = 64
MAX_LABEL_VALUE_LENGTH = 512
LABEL_KEY_PATTERN = r"[a-z0-9][a-z0-9._/-]{0,63}"
LABEL_KEY_REGEX = rf"\A{LABEL_KEY_PATTERN}\Z"
MAX_REVISION_LENGTH = 128  # a git commit (40 hex), a tag or a branch of the base model's repository
MAX_SOURCE_LABEL_LENGTH = 1024  # how an upload names its directory in messages (remote client)
# The files a version holds beside the LoRA weights (folder_files.py): how many, and how large a text
# or JSON one may be (parsed whole to check it). The largest tokenizer.json of a common model
# (Gemma 3, 262k tokens) is 33 MB; model cards are kilobytes. Binary files (tokenizer.model, new
# embeddings) are bounded by the whole push's limit (ADAPTERS_MAX_UPLOAD_BYTES).
MAX_FOLDER_FILES = 32
MAX_TEXT_FILE_BYTES = 64 * 1024 * 1024

# Line breaks and tabs are text; every other control character (NUL above all, which PostgreSQL
# cannot store) is refused.
_TEXT_CONTROLS = {"\t", "\n", "\r"}


def _control(value: str, allowed: set[str]) -> str | None:
    for char in value:
        if char not in allowed and unicodedata.category(char) == "Cc":
            return char
    return None


def base_model_problem(value: str) -> str | None:
    """Why `value` cannot be a base model name, or None if it can."""
    if not value.strip():
        return "is empty"
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_BASE_MODEL_BYTES:
        return f"is {size} bytes long, more than the limit of {MAX_BASE_MODEL_BYTES}"
    char = _control(value, set())
    if char is not None:
        return f"holds the control character {char!r}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (an unpaired surrogate)"
    return None


def check_base_model(value: str) -> None:
    problem = base_model_problem(value)
    if problem is not None:
        raise InvalidName(f"the base model name {problem}")


def check_text(value: str, what: str, limit: int) -> None:
    """A free-text field (description, yank reason): at most `limit` characters, no control
    characters but tabs and line breaks."""
    if len(value) > limit:
        raise InvalidRequest(f"the {what} is {len(value)} characters long, more than the limit of {limit}")
    char = _control(value, _TEXT_CONTROLS)
    if char is not None:
        raise InvalidRequest(f"the {what} holds the control character {char!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"the {what} is not valid Unicode (an unpaired surrogate)") from None


def check_count(values: tuple[str, ...] | list[str], what: str, limit: int) -> None:
    if len(values) > limit:
        raise InvalidRequest(f"{len(values)} {what} are more than the limit of {limit}")
