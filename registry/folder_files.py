"""Whole adapter folders: the files a version holds beside `adapter_config.json` and the weights.

PEFT and the engines read more than the LoRA weights from an adapter's folder: the model card
(`README.md`), the tokenizer of a fine-tune that added tokens or a chat template, and
`new_embeddings.safetensors` (PEFT's trainable tokens). A push stores those losslessly, each as a
content-addressed blob (so a tokenizer shared by many versions is stored once); the codec never sees
them. The version records them (table `version_files`, whose foreign key keeps their blobs) and its
content digest covers them, so two pushes that differ only in the README are two versions.

What a folder may hold is an allow-list of names (`kind_of`). Pickles (`training_args.bin`,
`optimizer.pt`, ...) are never stored: loading one runs whatever code it carries, and whoever pulls an
adapter should not have to trust whoever pushed it. They, hidden files, and anything else are skipped
with a one-line note each; an allowed file that is not what its name says (JSON that does not parse,
text that is not UTF-8, a safetensors file that does not load) or is over the limits refuses the push.

A folder saved by PEFT with several named adapters holds the `default` one at its root and each other
one in a subfolder named after it (`named_adapters`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import limits
from .errors import InvalidAdapterUpload
from .storage import BlobStorage, sha256_file

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
CORE_FILES = (CONFIG_FILE, *WEIGHT_FILES)

# name -> how it is checked: "json" (parses as strict JSON), "text" (UTF-8), "safetensors" (loads),
# "binary" (size only).
KINDS = {
    "README.md": "text",
    "tokenizer.json": "json",
    "tokenizer_config.json": "json",
    "special_tokens_map.json": "json",
    "added_tokens.json": "json",
    "chat_template.json": "json",
    "chat_template.jinja": "text",
    "merges.txt": "text",
    "tokenizer.model": "binary",  # sentencepiece (protobuf)
    "spiece.model": "binary",
    "sentencepiece.bpe.model": "binary",
    "new_embeddings.safetensors": "safetensors",
}
PATTERNS = (("vocab.json", "json"), ("vocab.txt", "text"), ("vocab.*", "binary"), ("*.tiktoken", "text"))
PICKLES = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt", "*.joblib")
ALLOWED_SUMMARY = "README.md, tokenizer files, chat templates, new_embeddings.safetensors"


def kind_of(name: str) -> str | None:
    """How an allowed file is checked, or None when a folder's file of this name is not stored."""
    if name in KINDS:
        return KINDS[name]
    for pattern, kind in PATTERNS:
        if fnmatch.fnmatchcase(name, pattern):
            return kind
    return None


def skip_reason(name: str) -> str:
    """Why a file of this name is not stored (for one that `kind_of` refuses)."""
    if any(fnmatch.fnmatchcase(name, p) for p in PICKLES):
        return "a pickle (loading it can run any code it carries): not stored"
    return f"not a file adapters store (they store {ALLOWED_SUMMARY}): not stored"


def check_name(name: str, where: str) -> None:
    """Refuse a file name an upload may not carry."""
    if "/" in name or "\\" in name or name in CORE_FILES or kind_of(name) is None:
        raise InvalidAdapterUpload(f"{where}/{name}: {skip_reason(name)}; send only {ALLOWED_SUMMARY}")


def named_adapters(folder: Path) -> list[str]:
    """The subfolders holding an adapter of their own (PEFT's named adapters), sorted."""
    try:
        children = sorted(Path(folder).iterdir())
    except OSError:
        return []
    return [c.name for c in children if not c.name.startswith(".") and (c / CONFIG_FILE).is_file()]


@dataclass
class Scan:
    files: list[Path] = field(default_factory=list)  # allowed names, sorted
    skipped: list[str] = field(default_factory=list)  # one line each: what was left out and why


def scan(folder: Path) -> Scan:
    """Sort a folder's entries into the files a push stores and those it skips (by name only).
    Hidden entries and the subfolders of named adapters (pushed on their own) are left out silently."""
    found = Scan()
    adapters = set(named_adapters(folder))
    for path in sorted(Path(folder).iterdir()):
        name = path.name
        if name.startswith(".") or name in CORE_FILES or name in adapters:
            continue
        if path.is_dir():
            found.skipped.append(
                f"{path}: a folder (only the files beside the adapter are stored): not stored"
            )
        elif kind_of(name) is None:
            found.skipped.append(f"{path}: {skip_reason(name)}")
        else:
            found.files.append(path)
    return found


@dataclass(frozen=True)
class FolderFile:
    name: str
    path: Path
    sha256: str
    size: int

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "size": self.size}


def _check_content(path: Path, kind: str, where: str) -> None:
    label = f"{where}/{path.name}"
    size = path.stat().st_size
    if kind in ("json", "text") and size > limits.MAX_TEXT_FILE_BYTES:
        raise InvalidAdapterUpload(
            f"{label}: {size} bytes, more than the limit of {limits.MAX_TEXT_FILE_BYTES}"
        )
    if kind == "text":
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidAdapterUpload(f"{label}: not UTF-8 text") from None
    elif kind == "json":
        # Plain JSON, not the registry's strict kind: the bytes are stored, never parsed into the
        # database, and tokenizer configs carry integers like 1e30 written out (model_max_length).
        try:
            json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidAdapterUpload(f"{label}: not UTF-8 text") from None
        except (ValueError, RecursionError) as exc:
            raise InvalidAdapterUpload(f"{label}: not valid JSON ({exc})") from None
    elif kind == "safetensors":
        from adapters.compress import stfile
        from adapters.compress.errors import CompressError

        try:
            stfile.load(path)
        except CompressError as exc:
            raise InvalidAdapterUpload(f"{label}: {exc}") from None


def collect(folder: Path, where: str, *, check_content: bool = True) -> list[FolderFile]:
    """The allowed files of `folder`, checked (names, count, sizes, and with `check_content` what each
    holds) and hashed; raises InvalidAdapterUpload naming the first one that fails."""
    paths = scan(folder).files
    if len(paths) > limits.MAX_FOLDER_FILES:
        raise InvalidAdapterUpload(
            f"{where}: {len(paths)} files beside the adapter, "
            f"more than the limit of {limits.MAX_FOLDER_FILES}"
        )
    found = []
    for path in paths:
        if not path.is_file():
            raise InvalidAdapterUpload(f"{where}/{path.name}: not a regular file")
        kind = kind_of(path.name)
        assert kind is not None
        if check_content:
            _check_content(path, kind, where)
        elif kind in ("json", "text") and path.stat().st_size > limits.MAX_TEXT_FILE_BYTES:
            _check_content(path, kind, where)  # the size check alone: it reads nothing over the limit
        digest, size = sha256_file(path)
        found.append(FolderFile(path.name, path, digest, size))
    return found


def content_digest(source_digest: str, files: Sequence[FolderFile] | Sequence[dict[str, Any]]) -> str:
    """A version's identity: its source's digest alone when it holds no other files (as every version
    pushed before folders were stored), else the sha256 of the source's digest and each file's name,
    digest and size."""
    records = sorted((f if isinstance(f, dict) else f.record() for f in files), key=lambda r: r["name"])
    if not records:
        return source_digest
    document = {"source": source_digest, "files": [[r["name"], r["sha256"], r["size"]] for r in records]}
    return hashlib.sha256(json.dumps(document, separators=(",", ":")).encode()).hexdigest()


def store(storage: BlobStorage, files: Sequence[FolderFile]) -> None:
    """Put each file in the blob store under its sha256 (content it holds already is not sent again)."""
    for f in files:
        if not storage.exists(f.sha256):
            storage.put_file(f.sha256, f.path)


def fetch(storage: BlobStorage, records: Sequence[dict[str, Any]], folder: Path) -> list[str]:
    """Write a version's stored files into `folder`, each verified against its sha256."""
    for record in records:
        check_name(record["name"], "stored version")  # never a path outside `folder`
        storage.get_file(record["sha256"], folder / record["name"])
    return [r["name"] for r in records]


class StoredFile:
    """A stored file served like a reconstructed one (cache.CachedFile): its bytes come from the blob
    store, checked against its sha256 as they stream. A range reads the blob to its end (where the
    check is) and holds its last piece back until then, so a corrupted blob cuts the response short
    (as the artifact download does)."""

    def __init__(self, storage: BlobStorage, record: dict[str, Any]) -> None:
        self.storage = storage
        self.name: str = record["name"]
        self.sha256: str = record["sha256"]
        self.size: int = record["size"]

    def chunks(self) -> Iterator[bytes]:
        return self.storage.iter_chunks(self.sha256)

    def range_chunks(self, start: int, end: int) -> Iterator[bytes]:
        offset, held = 0, b""
        for chunk in self.storage.iter_chunks(self.sha256):
            lo, hi = max(start - offset, 0), min(end + 1 - offset, len(chunk))
            offset += len(chunk)
            if lo >= hi:
                continue
            if held:
                yield held
            held = chunk[lo:hi]
        if held:
            yield held

    def copy_to(self, dest: Path) -> None:
        self.storage.get_file(self.sha256, dest)

    def close(self) -> None:
        """Nothing is held open between reads."""


ROOT_ADAPTER = "default"  # the name PEFT gives the adapter it saves at a folder's root


def push_plan(folder: Path, name: str, adapter: str | None = None) -> list[tuple[Path, str]]:
    """The (directory, registry name) pairs a push of `folder` as `name` makes: the root adapter as
    `name` and each named adapter's subfolder as `name-<adapter>`; with `adapter`, only that one, as
    `name` (`default` is the root one). Raises InvalidRequest, listing the adapters, when `adapter` is
    not among them or a derived name is not a valid adapter name."""
    from .errors import InvalidName, InvalidRequest
    from .refs import AdapterName

    folder = Path(folder)
    root = (folder / CONFIG_FILE).is_file()
    named = named_adapters(folder)
    held = ([f"{ROOT_ADAPTER} (the root)"] if root else []) + named
    if adapter is not None:
        if adapter == ROOT_ADAPTER and root:
            return [(folder, name)]
        if adapter in named:
            return [(folder / adapter, name)]
        raise InvalidRequest(f"{folder} holds no adapter {adapter!r}; it holds: {', '.join(held) or 'none'}")
    if not named:
        return [(folder, name)]  # a plain adapter folder (or none: the push says what is missing)
    plan = [(folder, name)] if root else []
    for sub in named:
        try:
            plan.append((folder / sub, str(AdapterName.parse(f"{name}-{sub}"))))
        except InvalidName:
            raise InvalidRequest(
                f"{folder} holds several adapters ({', '.join(held)}) and {name}-{sub} is not a valid "
                "adapter name: push them one at a time with --adapter NAME and a --name each"
            ) from None
    return plan
