"""Tiny models and PEFT adapters built on the spot: nothing is downloaded."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

TINY_LLAMA = {
    "vocab_size": 128,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}


def tiny_llama(seed: int = 0):
    """A 2-layer Llama with random weights (about 30k parameters)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**TINY_LLAMA))
    return model.eval()


def make_adapter(
    out_dir: str | Path, seed: int = 0, base_model_name: str = "tiny-llama", **lora: Any
) -> Path:
    """Save a PEFT LoRA adapter of a tiny Llama with random, non-zero A and B.

    `lora` goes to peft.LoraConfig (default: r=4 on q_proj and v_proj).
    """
    options: dict[str, Any] = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    options.update(lora)
    model = tiny_llama(seed)
    model.config.name_or_path = base_model_name
    synthesize_adapter(model, out_dir, seed, **options)
    return Path(out_dir)


def synthesize_adapter(model, out_dir: str | Path, seed: int = 0, scale: float = 0.05, **lora: Any):
    """Apply a PEFT LoRA (`lora` goes to peft.LoraConfig) to `model` with random, non-zero A and B and
    perturbed `modules_to_save` copies; save it to out_dir and return the PEFT model (in eval mode)."""
    from peft import LoraConfig, get_peft_model

    lora.setdefault("init_lora_weights", False)  # B = 0 would make every adapter the identity
    peft_model = get_peft_model(model, LoraConfig(**lora))
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.add_(scale * torch.randn_like(param))
    with warnings.catch_warnings():  # PEFT says it saves resized embeddings whole: it is meant to
        warnings.filterwarnings("ignore", message="Setting `save_embedding_layers`")
        peft_model.save_pretrained(str(out_dir))
    _drop_card(out_dir)
    return peft_model.eval()


def _drop_card(out_dir: str | Path) -> None:
    """PEFT writes a model card beside the adapter; the adapters made here are its two files alone (a
    version stores a card too: `make_adapter_folder` makes folders with one and the rest)."""
    (Path(out_dir) / "README.md").unlink(missing_ok=True)


def token_batch(n: int = 4, length: int = 12, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY_LLAMA["vocab_size"], (n, length), generator=gen)


SPECIAL_TOKENS = ["<unk>", "<pad>", "<s>", "</s>"]


def char_tokenizer():
    """A character-level tokenizer over printable ASCII (ids below TINY_LLAMA's vocab size)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for code in range(32, 127):
        vocab[chr(code)] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def save_tiny_llama(out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny Llama model directory with its tokenizer, loadable offline with from_pretrained."""
    out = Path(out_dir)
    tiny_llama(seed).save_pretrained(out)
    char_tokenizer().save_pretrained(out)
    (out / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    return out


TINY_BERT = {
    "vocab_size": 128,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 64,
}
TINY_T5 = {
    "vocab_size": 128,
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "num_heads": 4,
    "pad_token_id": 1,  # char_tokenizer's <pad>
    "eos_token_id": 3,
    "decoder_start_token_id": 1,
}


def save_headless_bert(out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny BERT encoder saved as the headless `BertModel` (as many models are published), with a
    tokenizer."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    out = Path(out_dir)
    BertModel(BertConfig(**TINY_BERT)).save_pretrained(out)
    char_tokenizer().save_pretrained(out)
    (out / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    return out


def save_tiny_t5(out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny T5 (encoder-decoder with its LM head) with a tokenizer."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    out = Path(out_dir)
    T5ForConditionalGeneration(T5Config(**TINY_T5)).save_pretrained(out)
    char_tokenizer().save_pretrained(out)
    (out / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    return out


SAMPLE_TEXTS = [
    "The registry keeps every version of an adapter.",
    "Push a trained LoRA and pull it back as a PEFT directory.",
    "Compression stores coefficients over seeded random bases.",
    "Each artifact records the generator and a fingerprint.",
    "Workers claim pending versions from the database queue.",
    "A fidelity gate keeps bad adapters from being served.",
    "Tokens are stored only as hashes; scopes limit what they can do.",
    "The quick brown fox jumps over the lazy dog.",
    "Numbers: 3.14159, 2.71828 and 1.41421 are famous constants.",
    "Lookup by task returns the adapters trained for that task.",
    "Aliases move; versions never change once they are ready.",
    "Reconstruction writes the same bytes every time.",
]


def template_texts(n: int, seed: int = 0) -> list[str]:
    """Sentences from a small grammar: enough shared structure for a tiny model to learn in seconds."""
    import random

    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "my friend", "the robot", "our team", "the bird"]
    verbs = ["sees", "likes", "builds", "finds", "moves", "paints"]
    objects = ["a red box", "the green door", "two blue cups", "the old map", "a small boat"]
    places = ["at noon", "in the park", "near the lake", "after lunch", "by the road"]
    return [
        f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} {rng.choice(places)}."
        for _ in range(n)
    ]


def train_adapter(
    base_dir: str | Path, texts: list[str], out_dir: str | Path, steps: int = 120, seed: int = 0, **lora: Any
) -> Path:
    """Train a LoRA adapter with PEFT (next-token loss) on the texts; save it to out_dir."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(base_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    options: dict[str, Any] = {
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    }
    options.update(lora)
    peft_model = get_peft_model(model, LoraConfig(**options))
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    for _ in range(steps):
        loss = peft_model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    peft_model.save_pretrained(str(out_dir))
    _drop_card(out_dir)
    return Path(out_dir)


def adapter_variants(adapter_dir: str | Path, out_root: str | Path, n: int) -> list[Path]:
    """`n` adapters with the shapes of the one in `adapter_dir` and distinct content."""
    from adapters.compress.peft_io import LoraCheckpoint, read_adapter, write_adapter

    base = read_adapter(adapter_dir)
    return [
        write_adapter(
            LoraCheckpoint(base.config, {k: v * (1 + i / 64) for k, v in base.tensors.items()}),
            Path(out_root) / f"variant-{i}",
        )
        for i in range(n)
    ]


FOLDER_EXTRAS = (
    "README.md",
    "chat_template.jinja",
    "new_embeddings.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)


def make_adapter_folder(out_dir: str | Path, seed: int = 0, readme: str = "# A tiny adapter\n") -> Path:
    """A PEFT adapter folder as training leaves it: the adapter, its model card, the tokenizer it was
    trained with, a `new_embeddings.safetensors`, and a pickled `training_args.bin` (never stored)."""
    from safetensors.torch import save_file

    out = make_adapter(out_dir, seed=seed)
    (out / "README.md").write_text(readme)
    char_tokenizer().save_pretrained(out)
    (out / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    gen = torch.Generator().manual_seed(seed)
    save_file(
        {"embed_tokens": torch.randn(2, TINY_LLAMA["hidden_size"], generator=gen)},
        str(out / "new_embeddings.safetensors"),
    )
    torch.save({"learning_rate": 1e-4}, out / "training_args.bin")
    return out


def save_two_adapters(path: Path) -> dict[str, torch.Tensor]:
    """Save a PEFT model with adapters `default` (r=4 on q_proj) and `other` (r=2 on v_proj) as PEFT
    does (`default` at the root, `other/` beside it); returns each adapter's logits on token_batch()."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(0), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    model.add_adapter("other", LoraConfig(r=2, target_modules=["v_proj"], init_lora_weights=False))
    torch.manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(0.05 * torch.randn_like(param))
    model.save_pretrained(str(path))
    expected = {}
    for adapter in ("default", "other"):
        model.set_adapter(adapter)
        with torch.no_grad():
            expected[adapter] = model.eval()(token_batch()).logits
    return expected


def rewrite_artifact(path, out, edit_header=None, edit_metadata=None, edit_tensors=None, fix_checksum=True):
    """A copy of the NOLA artifact `path` at `out`, its header, metadata or tensors edited in place by
    the given callables, and its checksum made to match again unless `fix_checksum` is false: the
    corrupt and tampered artifacts of the reader tests."""
    from adapters.compress import stfile
    from adapters.compress.artifact import CHECKSUM_KEY, HEADER_KEY, checksum, decode_header, encode_header

    tensors, metadata = stfile.load(path)
    if edit_header:
        header = decode_header(metadata[HEADER_KEY])
        edit_header(header)
        metadata[HEADER_KEY] = encode_header(header)
    if edit_metadata:
        edit_metadata(metadata)
    if edit_tensors:
        edit_tensors(tensors)
    if fix_checksum:
        metadata[CHECKSUM_KEY] = checksum(tensors, metadata)
    stfile.write(out, tensors, metadata)
    return out
