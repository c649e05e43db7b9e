"""Compatibility facts: what a serving engine needs to know about an adapter before it loads it.

Computed once, at push, from the validated checkpoint and kept on the version (`versions.compat`), so
listings can filter on them and `adapters check` can judge an engine without downloading anything.
Versions pushed before the facts existed have none (null): unknown, never assumed compatible.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.compress.peft_io import LoraCheckpoint

# Bumped when the facts' meaning changes, so readers can tell old records from new ones.
FACTS_VERSION = 1

# Tensor name parts PEFT writes for the features engines care about.
DORA_MAGNITUDE = "lora_magnitude_vector"
TRAINABLE_TOKENS = "trainable_tokens_delta"


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _short_name(module: str) -> str:
    return module.rsplit(".", 1)[-1]


def facts_of(checkpoint: LoraCheckpoint) -> dict[str, Any]:
    """The compatibility facts of a validated adapter (JSON-serializable, sorted, deterministic)."""
    from adapters.compress.peft_io import RankRules

    config = checkpoint.config
    rules = RankRules.of(config)
    pairs = checkpoint.pairs
    ranks = {p.module: p.rank for p in pairs}
    alphas = {p.module: rules.rank_alpha(p.module)[1] for p in pairs}
    extra = checkpoint.extra_keys()
    modules_to_save = sorted(str(m) for m in (config.get("modules_to_save") or []))
    embedding_modules = sorted(p.module for p in pairs if p.kind == "embedding")
    trainable_tokens = bool(config.get("trainable_token_indices")) or any(
        TRAINABLE_TOKENS in k for k in checkpoint.tensors
    )
    lora_bias = bool(config.get("lora_bias")) or any(".lora_B.bias" in k for k in checkpoint.tensors)
    dora = bool(config.get("use_dora")) or any(DORA_MAGNITUDE in k for k in extra)
    return {
        "facts_version": FACTS_VERSION,
        "peft_type": str(config.get("peft_type") or "LORA"),
        "max_rank": max(ranks.values()),
        "min_rank": min(ranks.values()),
        "r": rules.r,
        # Only the modules whose rank / alpha differs from r / lora_alpha (rank_pattern, alpha_pattern).
        "ranks": {m: r for m, r in sorted(ranks.items()) if r != rules.r},
        "lora_alpha": rules.lora_alpha,
        "alphas": {m: a for m, a in sorted(alphas.items()) if a != float(rules.lora_alpha)},
        "per_module_scale": len({p.scale for p in pairs}) > 1,
        "use_rslora": rules.rslora,
        "target_modules": sorted({_short_name(p.module) for p in pairs}),
        "lora_modules": len(pairs),
        "use_dora": dora,
        "modules_to_save": modules_to_save,
        "bias": str(config.get("bias") or "none"),
        "lora_bias": lora_bias,
        "embedding_modules": embedding_modules,
        "trainable_token_indices": trainable_tokens,
        "embedding_deltas": bool(embedding_modules) or trainable_tokens,
        "conv": any(p.kind == "conv" for p in pairs),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
        "dtypes": sorted({_dtype_name(t.dtype) for t in checkpoint.tensors.values()}),
    }


def facts_lines(facts: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Human lines for `adapters show`: (label, text)."""
    if not facts:
        return [("compat", "unknown (pushed before compatibility facts were recorded)")]
    ranks = facts.get("ranks") or {}
    rank = f"r={facts['max_rank']}" if not ranks else f"r={facts['min_rank']}..{facts['max_rank']}"
    if ranks:
        rank += f" ({len(ranks)} modules differ from r={facts['r']} by rank_pattern)"
    alphas = facts.get("alphas") or {}
    alpha = f"alpha={facts['lora_alpha']:g}" + (f" ({len(alphas)} by alpha_pattern)" if alphas else "")
    saved = ",".join(facts.get("modules_to_save") or []) or "none"
    embeddings = "yes" if facts.get("embedding_deltas") else "no"
    bias = facts.get("bias", "none") + (" + lora_bias" if facts.get("lora_bias") else "")
    return [
        ("compat", f"{rank} {alpha} rslora={facts.get('use_rslora')} dora={facts.get('use_dora')}"),
        ("", f"{facts['lora_modules']} LoRA modules on {','.join(facts.get('target_modules') or [])}"),
        ("", f"modules_to_save={saved} bias={bias} embedding deltas={embeddings}"),
        ("", f"dtypes={','.join(facts.get('dtypes') or [])}"),
    ]
