"""Read, validate and write PEFT LoRA adapter directories.

A PEFT LoRA directory holds `adapter_config.json` and `adapter_model.safetensors` (or a legacy
`adapter_model.bin`). Keys look like `base_model.model.<module path>.lora_A.weight` ([r, in]) and
`...lora_B.weight` ([out, r]); embeddings use `lora_embedding_A` ([r, vocab]) / `lora_embedding_B`
([dim, r]). Everything else (`modules_to_save` copies, DoRA magnitudes, biases, `lora_B.bias`, saved
embedding layers, conv LoRA) is kept as-is and travels losslessly.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from . import stfile, strict_json
from .errors import CompressError, InvalidAdapter, LimitExceeded
from .limits import MAX_CONFIG_BYTES, MAX_PATTERN_LENGTH, MAX_PATTERN_MATCHES, MAX_TENSORS
from .patterns import PatternTable, exact_names

CONFIG_FILE = "adapter_config.json"
SAFETENSORS_FILE = "adapter_model.safetensors"
BIN_FILE = "adapter_model.bin"
KEY_PREFIX = "base_model.model."
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# (suffix of the A key, suffix of the B key, kind)
_PAIR_SUFFIXES: tuple[tuple[str, str, Literal["linear", "embedding"]], ...] = (
    (".lora_A.weight", ".lora_B.weight", "linear"),
    (".lora_embedding_A", ".lora_embedding_B", "embedding"),
)


@dataclass(frozen=True)
class LoraPair:
    """One adapted module: delta-W = scale * B @ A, with A [rank, in] and B [out, rank]."""

    module: str  # module path without the PEFT prefix, e.g. "model.layers.0.self_attn.q_proj"
    a_key: str
    b_key: str
    kind: Literal["linear", "embedding", "conv"]
    rank: int
    in_features: int
    out_features: int
    scale: float

    @property
    def params(self) -> int:
        return self.rank * (self.in_features + self.out_features)


@dataclass
class LoraCheckpoint:
    """An adapter in memory: its PEFT config, every tensor keyed as PEFT writes it, and the LoRA pairs."""

    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    pairs: list[LoraPair] = field(default_factory=list)

    def pair_keys(self) -> set[str]:
        return {k for p in self.pairs for k in (p.a_key, p.b_key)}

    def extra_keys(self) -> list[str]:
        """Keys of tensors that are not LoRA A/B factors (they travel losslessly)."""
        paired = self.pair_keys()
        return sorted(k for k in self.tensors if k not in paired)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def read_config(path: str | Path) -> dict[str, Any]:
    """Parse and check `adapter_config.json` in a PEFT directory."""
    config_path = Path(path) / CONFIG_FILE
    if not Path(path).is_dir():
        raise InvalidAdapter(f"{path}: not a directory")
    if not config_path.is_file():
        raise InvalidAdapter(f"{path}: missing {CONFIG_FILE}")
    size = config_path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise InvalidAdapter(f"{config_path}: {size} bytes is more than the limit of {MAX_CONFIG_BYTES}")
    config = parse_config(config_path.read_bytes(), str(config_path))
    try:
        check_config(config)
    except InvalidAdapter as exc:
        raise InvalidAdapter(f"{config_path}: {exc}") from None
    return config


def parse_config(data: bytes, where: str = CONFIG_FILE) -> Any:
    """The JSON in an adapter_config.json, parsed strictly (see strict_json); raises InvalidAdapter."""
    try:
        return strict_json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidAdapter(f"{where}: not UTF-8 text") from None
    except strict_json.JSONRefused as exc:
        raise InvalidAdapter(f"{where}: {exc}") from None


TASK_TYPES = ("SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")
BIASES = ("none", "all", "lora_only")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# PEFT puts modules_to_save and layers_pattern entries into regular expressions of its own when it
# loads an adapter (`(^|.*\.){name}($|\..*)`): they must be plain module names, which cannot
# backtrack, not patterns.
_PLAIN_NAME = re.compile(r"[^\s\\^$*+?{}\[\]()|]+")


def _is_plain(value: Any) -> bool:
    return isinstance(value, str) and value.isascii() and _PLAIN_NAME.fullmatch(value) is not None


def _is_plain_names(value: Any) -> bool:
    return isinstance(value, list) and all(_is_plain(v) for v in value)


# Fields that peft.LoraConfig, or PEFT loading the adapter, fails on unless they have these types (or
# are absent). field -> (test, what the value must be).
_FIELD_TYPES: dict[str, tuple[Any, str]] = {
    "target_modules": (
        lambda v: v is None or isinstance(v, str) or _is_names(v),
        "a list of module names, a regular expression or null",
    ),
    "exclude_modules": (
        lambda v: v is None or isinstance(v, str) or _is_names(v),
        "a list of module names, a regular expression or null",
    ),
    "modules_to_save": (lambda v: v is None or _is_plain_names(v), "a list of plain module names or null"),
    "target_parameters": (lambda v: v is None or _is_names(v), "a list of parameter names or null"),
    "layers_to_transform": (
        lambda v: v is None or _is_int(v) or (isinstance(v, list) and all(_is_int(x) for x in v)),
        "a layer index, a list of layer indices or null",
    ),
    "layers_pattern": (
        lambda v: v is None or _is_plain(v) or _is_plain_names(v),
        "a plain name, a list of plain names or null",
    ),
    "base_model_name_or_path": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "revision": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "task_type": (lambda v: v is None or v in TASK_TYPES, f"one of {', '.join(TASK_TYPES)} or null"),
    "bias": (lambda v: v in BIASES, f"one of {', '.join(BIASES)}"),
    "lora_dropout": (lambda v: _is_number(v) and v <= 1, "a number no larger than 1"),
    "init_lora_weights": (lambda v: isinstance(v, (bool, str)), "true, false or the name of a method"),
    "rank_pattern": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    "alpha_pattern": (lambda v: v is None or isinstance(v, dict), "an object or null"),
}


def _check_regex(name: str, value: Any) -> None:
    """PEFT matches a string `target_modules` / `exclude_modules` with re.fullmatch when it loads the
    adapter: it must at least compile. (Where this process loads an adapter with PEFT, it replaces
    them first: see loading_config.)"""
    if not isinstance(value, str):
        return
    if len(value) > MAX_PATTERN_LENGTH:
        raise InvalidAdapter(f"config field {name} is longer than {MAX_PATTERN_LENGTH} characters")
    try:
        re.compile(value)
    except (re.error, RecursionError, OverflowError) as exc:
        reason = exc.msg if isinstance(exc, re.error) else str(exc)
        raise InvalidAdapter(f"config field {name} is not a valid regular expression ({reason})") from None


def check_config(config: Any) -> None:
    """Raise InvalidAdapter unless `config` is a LoRA config that PEFT can load and whose math fields
    make sense. Mirrors the checks of peft.LoraConfig and of loading an adapter (without PEFT)."""
    if not isinstance(config, dict):
        raise InvalidAdapter("adapter config must be a JSON object")
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise InvalidAdapter(f"unsupported peft_type {_short(peft_type)}: only LORA adapters are accepted")
    r = config.get("r")
    if not _is_int(r) or r <= 0:
        raise InvalidAdapter(f"config field r must be a positive integer, got {_short(r)}")
    alpha = config.get("lora_alpha")
    if not _is_number(alpha) or not math.isfinite(alpha):
        raise InvalidAdapter(f"config field lora_alpha must be a finite number, got {_short(alpha)}")
    for name, (test, expected) in _FIELD_TYPES.items():
        if name in config and not test(config[name]):
            raise InvalidAdapter(f"config field {name} must be {expected}, got {_short(config[name])}")
    for name in ("target_modules", "exclude_modules"):
        _check_regex(name, config.get(name))
    if isinstance(config.get("target_modules"), str):
        for name in ("layers_to_transform", "layers_pattern"):
            if config.get(name) is not None:
                raise InvalidAdapter(f"config field {name} cannot be used when target_modules is a string")
    if config.get("layers_pattern") and config.get("layers_to_transform") is None:
        raise InvalidAdapter("config field layers_pattern needs layers_to_transform")
    if config.get("lora_bias"):
        if config.get("init_lora_weights", True) not in (True, False):
            raise InvalidAdapter("config field lora_bias needs init_lora_weights true or false")
        if config.get("use_dora"):
            raise InvalidAdapter("config field lora_bias cannot be combined with use_dora")
    ranks = config.get("rank_pattern") or {}
    if not all(isinstance(k, str) and _is_int(v) and v > 0 for k, v in ranks.items()):
        raise InvalidAdapter("config field rank_pattern must map module patterns to positive integers")
    alphas = config.get("alpha_pattern") or {}
    if not all(isinstance(k, str) and _is_number(v) and v > 0 for k, v in alphas.items()):
        raise InvalidAdapter("config field alpha_pattern must map module patterns to positive numbers")
    RankRules.of(config)  # compiles the patterns: a pattern that cannot be matched is refused here


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class RankRules:
    """The rank, lora_alpha and scale PEFT gives each module, after rank_pattern / alpha_pattern."""

    r: int
    lora_alpha: float
    rslora: bool
    ranks: PatternTable
    alphas: PatternTable

    @classmethod
    def of(cls, config: dict[str, Any]) -> RankRules:
        return cls(
            r=config["r"],
            lora_alpha=config["lora_alpha"],
            rslora=bool(config.get("use_rslora")),
            ranks=PatternTable("rank_pattern", config.get("rank_pattern") or {}),
            alphas=PatternTable("alpha_pattern", config.get("alpha_pattern") or {}),
        )

    def check_work(self, modules: int) -> None:
        """Refuse before matching when the patterns times the modules exceed MAX_PATTERN_MATCHES."""
        for table in (self.ranks, self.alphas):
            if len(table) * modules > MAX_PATTERN_MATCHES:
                raise InvalidAdapter(
                    f"config field {table.field} has {len(table)} patterns for {modules} modules: "
                    f"more than {MAX_PATTERN_MATCHES} matches to run"
                )

    def rank_alpha(self, module: str) -> tuple[int, float]:
        rank = self.ranks.lookup(module)
        alpha = self.alphas.lookup(module)
        return (self.r if rank is None else rank), float(self.lora_alpha if alpha is None else alpha)

    def scale(self, module: str) -> float:
        return self.scale_of(*self.rank_alpha(module))

    def scale_of(self, rank: int, alpha: float) -> float:
        return alpha / math.sqrt(rank) if self.rslora else alpha / rank


def module_rank_alpha(config: dict[str, Any], module: str) -> tuple[int, float]:
    """The rank and lora_alpha PEFT gives `module`, after rank_pattern / alpha_pattern."""
    return RankRules.of(config).rank_alpha(module)


def module_scale(config: dict[str, Any], module: str) -> float:
    """PEFT's scaling for `module`: lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA."""
    return RankRules.of(config).scale(module)


def loading_config(checkpoint: LoraCheckpoint) -> dict[str, Any]:
    """The checkpoint's config for loading it with PEFT in this process (a worker distilling against
    its base model), with every pattern from the upload that PEFT would run with Python's
    backtracking `re` against the base model's module names replaced by one that cannot backtrack:

    - rank_pattern / alpha_pattern: one key per value, matching exactly the names of the modules
      given it (as RE2 matched the upload's keys);
    - a string target_modules or exclude_modules: the list of the adapter's modules (PEFT matches
      lists by name), which also makes layers_to_transform / layers_pattern moot.

    The model PEFT builds is the same: the same modules get the same ranks and scales (modules the
    upload targets but holds no weights for would carry zero LoRA factors, so are left out)."""
    config = dict(checkpoint.config)
    rules = RankRules.of(config)
    modules = sorted({pair.module for pair in checkpoint.pairs})
    if isinstance(config.get("target_modules"), str) or isinstance(config.get("exclude_modules"), str):
        config.update(
            target_modules=modules, exclude_modules=None, layers_to_transform=None, layers_pattern=None
        )
    ranks: dict[int, list[str]] = {}
    alphas: dict[float, list[str]] = {}
    for module in modules:
        rank, alpha = rules.rank_alpha(module)
        if rank != rules.r:
            ranks.setdefault(rank, []).append(module)
        if alpha != rules.lora_alpha:
            alphas.setdefault(alpha, []).append(module)
    config["rank_pattern"] = {exact_names(names): rank for rank, names in ranks.items()}
    config["alpha_pattern"] = {exact_names(names): alpha for alpha, names in alphas.items()}
    return config


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    st_path, bin_path = path / SAFETENSORS_FILE, path / BIN_FILE
    if st_path.is_file():
        try:
            tensors, _ = stfile.load(st_path)
        except LimitExceeded as exc:
            raise InvalidAdapter(f"{st_path}: {exc}") from None
        except CompressError as exc:
            raise InvalidAdapter(f"{st_path}: malformed safetensors ({exc})") from None
        return tensors
    if bin_path.is_file():
        try:
            state = torch.load(bin_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - the unpickler raises many types; all mean "refused"
            raise InvalidAdapter(
                f"{bin_path}: refused by torch.load(weights_only=True): {type(exc).__name__}"
            ) from None
        if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
        ):
            raise InvalidAdapter(f"{bin_path}: not a mapping of names to tensors")
        if len(state) > MAX_TENSORS:
            raise InvalidAdapter(f"{bin_path}: {len(state)} tensors, more than the limit of {MAX_TENSORS}")
        return {k: v.contiguous() for k, v in state.items()}
    raise InvalidAdapter(f"{path}: missing {SAFETENSORS_FILE} (or {BIN_FILE})")


def module_name(key: str, suffix: str) -> str:
    name = key[: -len(suffix)]
    return name[len(KEY_PREFIX) :] if name.startswith(KEY_PREFIX) else name


def find_pairs(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> list[LoraPair]:
    """Match every LoRA A with its B and check their shapes against each other and the config."""
    rules = RankRules.of(config)
    pairs: list[LoraPair] = []
    stems: list[tuple[str, str, Literal["linear", "embedding"], set[str]]] = []
    for a_suffix, b_suffix, kind in _PAIR_SUFFIXES:
        a_keys = {k[: -len(a_suffix)] for k in tensors if k.endswith(a_suffix)}
        b_keys = {k[: -len(b_suffix)] for k in tensors if k.endswith(b_suffix)}
        for stem in sorted(a_keys ^ b_keys):
            missing = b_suffix if stem in a_keys else a_suffix
            raise InvalidAdapter(f"{stem}: has no matching {missing.lstrip('.')}")
        stems.append((a_suffix, b_suffix, kind, a_keys))
    rules.check_work(sum(len(a_keys) for *_, a_keys in stems))
    for a_suffix, b_suffix, kind, a_keys in stems:
        for stem in sorted(a_keys):
            a_key, b_key = stem + a_suffix, stem + b_suffix
            a, b = tensors[a_key], tensors[b_key]
            module = module_name(a_key, a_suffix)
            conv = kind == "linear" and a.dim() == 4 and b.dim() == 4
            if not conv and (a.dim() != 2 or b.dim() != 2):
                raise InvalidAdapter(
                    f"{module}: LoRA factors must be 2-D, got A {tuple(a.shape)} and B {tuple(b.shape)}"
                )
            if a.shape[0] != b.shape[1]:
                raise InvalidAdapter(
                    f"{module}: inconsistent shapes, A {tuple(a.shape)} has rank {a.shape[0]} "
                    f"but B {tuple(b.shape)} has rank {b.shape[1]}"
                )
            rank, alpha = rules.rank_alpha(module)
            if a.shape[0] != rank:
                raise InvalidAdapter(
                    f"{module}: factors have rank {a.shape[0]} but the config gives rank {rank}"
                )
            pairs.append(
                LoraPair(
                    module=module,
                    a_key=a_key,
                    b_key=b_key,
                    kind="conv" if conv else kind,
                    rank=rank,
                    in_features=int(a[0].numel()),
                    out_features=int(b.shape[0]),
                    scale=rules.scale_of(rank, alpha),
                )
            )
    if not pairs:
        raise InvalidAdapter("no LoRA weights found (expected keys ending in lora_A.weight / lora_B.weight)")
    return sorted(pairs, key=lambda p: p.module)


def check_tensors(tensors: dict[str, torch.Tensor]) -> None:
    for key, tensor in tensors.items():
        if tensor.dtype not in FLOAT_DTYPES:
            raise InvalidAdapter(f"{key}: unsupported dtype {tensor.dtype} (expected a float type)")
        if tensor.numel() and not bool(torch.isfinite(tensor).all()):
            raise InvalidAdapter(f"{key}: contains NaN or Inf values")


# PEFT keeps these config fields as sets and writes them in arbitrary order.
SET_VALUED_FIELDS = ("target_modules", "exclude_modules")
# PEFT gives a module the value of the first of these keys that matches it: their order is meaning.
ORDERED_FIELDS = ("rank_pattern", "alpha_pattern")


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def config_json(config: dict[str, Any], *, indent: int | None = None) -> str:
    """The config as JSON with its keys sorted (identical content, identical bytes), except inside
    rank_pattern and alpha_pattern, which keep their order."""
    ordered = {
        key: config[key] if key in ORDERED_FIELDS and isinstance(config[key], dict) else _sorted(config[key])
        for key in sorted(config)
    }
    return json.dumps(ordered, indent=indent)


def normalize_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config with set-valued fields sorted, so identical adapters serialize identically."""
    out = dict(config)
    for name in SET_VALUED_FIELDS:
        if isinstance(out.get(name), list) and all(isinstance(v, str) for v in out[name]):
            out[name] = sorted(set(out[name]))
    return out


def validate(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> LoraCheckpoint:
    """Check a config and its tensors together and return the checkpoint with its LoRA pairs."""
    check_config(config)
    config = normalize_config(config)
    check_tensors(tensors)
    return LoraCheckpoint(config=config, tensors=tensors, pairs=find_pairs(config, tensors))


def read_adapter(path: str | Path) -> LoraCheckpoint:
    """Read and validate a PEFT LoRA directory. Raises InvalidAdapter with a readable reason."""
    path = Path(path)
    config = read_config(path)
    return validate(config, _load_tensors(path))


def write_adapter(checkpoint: LoraCheckpoint, out_dir: str | Path) -> Path:
    """Write a PEFT directory (config + safetensors with PEFT's keys and dtypes) that PEFT loads as is."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(config_json(checkpoint.config, indent=2) + "\n")
    stfile.write(out / SAFETENSORS_FILE, checkpoint.tensors, metadata={"format": "pt"})
    return out
