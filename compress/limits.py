"""Limits on what an adapter may hold, so that no upload can cost unbounded time or memory.

Each limit sits far above what real LoRA adapters need. For scale: a Llama-2-7B adapter with r=64 on
every linear layer (q, k, v, o, gate, up, down; 32 layers) and `modules_to_save` (embed_tokens,
lm_head) has 450 tensors (0.79 GiB in bf16) and a 61 kB safetensors header (136 bytes per tensor);
its adapter_config.json is about 1 kB, or about 20 kB with a per-module `rank_pattern` (EVA writes one).
"""

from __future__ import annotations

# rank_pattern / alpha_pattern (see patterns.py): the length of one pattern, and how many
# (module, pattern) pairs one adapter may ask to match. 2^22 pairs of patterns without literal text
# (which RE2's filter cannot skip) take about 1 s; EVA's per-module patterns for a 70B model (560
# modules x 560 patterns, 0.3M pairs) need far less.
MAX_PATTERN_LENGTH = 4096
MAX_PATTERN_MATCHES = 1 << 22
