"""Limits on what an adapter may hold, so that no upload can cost unbounded time or memory.

Each limit sits far above what real LoRA adapters need. For scale: a Llama-2-7B adapter with r=64 on
every linear layer (q, k, v, o, gate, up, down; 32 layers) and `modules_to_save` (embed_tokens,
lm_head) has 450 tensors (0.79 GiB in bf16) and a 61 kB safetensors header (136 bytes per tensor);
its adapter_config.json is about 1 kB, or about 20 kB with a per-module `rank_pattern` (EVA writes one).
"""

from __future__ import annotations

# adapter_config.json: its size, and how deeply its JSON may nest (PEFT's deepest fields nest 3 levels).
MAX_CONFIG_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 32
# Integers in uploaded JSON: larger ones are no rank, size or offset, and some (over 4,300 digits)
# Python cannot even convert.
MAX_JSON_INT_DIGITS = 20

# The safetensors header: 16 MiB and 65,536 tensors, ~275x and ~145x the 7B adapter above; enough for
# LoRA on every expert of a large mixture-of-experts model (Qwen3-30B-A3B: ~37k tensors, ~5 MB),
# with room for the config an artifact's header repeats. Reading and checking 65,536 empty tensors
# takes under 2 s of CPU and 140 MB; a 94 MB header with 1.4M of them took 68 s and 1.5 GB.
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_TENSORS = 65_536
MAX_TENSOR_DIMS = 8  # LoRA factors have 2 (4 for conv); saved modules rarely more than 5

# rank_pattern / alpha_pattern (see patterns.py): the length of one pattern, and how many
# (module, pattern) pairs one adapter may ask to match. 2^22 pairs of patterns without literal text
# (which RE2's filter cannot skip) take about 1 s; EVA's per-module patterns for a 70B model (560
# modules x 560 patterns, 0.3M pairs) need far less.
MAX_PATTERN_LENGTH = 4096
MAX_PATTERN_MATCHES = 1 << 22
