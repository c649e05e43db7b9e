"""Pure numerics and file formats for LoRA adapters: PEFT I/O, codecs, NOLA bases, fitting, fidelity.

Nothing here imports from the registry, the API or the CLI: tensors and files in, tensors and files out.
"""
