"""Errors raised by the compression library. All are ValueErrors: they describe bad input, not bugs."""


class CompressError(ValueError):
    """Base class for every error this library raises about its input."""


class InvalidAdapter(CompressError):
    """A PEFT adapter directory that cannot be read or is inconsistent."""


class InvalidArtifact(CompressError):
    """An artifact file that is truncated, tampered with, of an unknown format or fails verification."""


class LimitExceeded(InvalidArtifact):
    """A file beyond what this library reads (compress.limits): e.g. a safetensors header that is
    larger, or lists more tensors, than any LoRA adapter needs."""
