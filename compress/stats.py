"""Per-module input second moments C = E[x x^T], the metric of the activation-aware fit.

A module with input size n keeps C either in full ([n, n], for small n) or as its top m eigenpairs plus
one isotropic remainder: C ~ U diag(lam) U^T + rest * I, where rest is the mean of the dropped
eigenvalues. Activations of large models concentrate in few directions, so a few hundred eigenpairs
keep nearly all of C, the file stays small (a LLaMA-7B-sized adapter needs ~0.4 GB instead of ~20 GB),
and the fit can solve in a random subspace with a Woodbury identity instead of a dense k x k system.

Files are safetensors: `<module>.cov`, or `<module>.eigvecs` / `<module>.eigvals`, with the token count
and remainder in the metadata.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from . import stfile
from .errors import CompressError

STATS_FORMAT = "adapters.stats"
STATS_VERSION = "1"
DEFAULT_MAX_RANK = 256


@dataclass
class InputStats:
    """E[x x^T] of one module's inputs: `full`, or `eigvecs` [n, m] / `eigvals` [m] plus `rest` * I."""

    dim: int
    count: int
    full: torch.Tensor | None = None
    eigvecs: torch.Tensor | None = None
    eigvals: torch.Tensor | None = None
    rest: float = 0.0

    def __post_init__(self) -> None:
        if (self.full is None) == (self.eigvecs is None):
            raise ValueError("InputStats holds either a full matrix or eigenpairs")
        if self.full is not None and tuple(self.full.shape) != (self.dim, self.dim):
            raise ValueError(f"full second moment must be [{self.dim}, {self.dim}]")
        if self.eigvecs is not None and (
            self.eigvals is None
            or self.eigvecs.shape[0] != self.dim
            or self.eigvecs.shape[1] != self.eigvals.shape[0]
        ):
            raise ValueError("eigvecs must be [dim, m] and eigvals [m]")
        for t in (self.full, self.eigvecs, self.eigvals):
            if t is not None and not bool(torch.isfinite(t).all()):
                raise ValueError("second moments must be finite")

    @property
    def low_rank(self) -> bool:
        return self.full is None

    def trace(self) -> float:
        if self.full is not None:
            return float(self.full.diagonal().sum())
        return float(self.eigvals.sum()) + self.rest * (self.dim - self.eigvals.numel())

    def dense(self) -> torch.Tensor:
        """The [n, n] matrix (for small n and tests)."""
        if self.full is not None:
            return self.full.double()
        u, lam = self.eigvecs.double(), self.eigvals.double()
        return (u * lam) @ u.T + self.rest * torch.eye(self.dim, dtype=torch.float64)

    def compact(self, max_rank: int = DEFAULT_MAX_RANK) -> InputStats:
        """Keep at most `max_rank` eigenpairs (plus the isotropic remainder) when that is smaller."""
        if self.full is None or self.dim <= max_rank:
            return self
        lam, vecs = torch.linalg.eigh(self.full.double())  # ascending
        lam = lam.clamp_min(0)
        top, rest = lam[-max_rank:], lam[:-max_rank]
        return InputStats(
            dim=self.dim,
            count=self.count,
            eigvecs=vecs[:, -max_rank:].float().contiguous(),
            eigvals=top.float(),
            rest=float(rest.mean()) if rest.numel() else 0.0,
        )


def save_stats(path: str | Path, stats: dict[str, InputStats]) -> int:
    tensors: dict[str, torch.Tensor] = {}
    info: dict[str, dict] = {}
    for module, s in sorted(stats.items()):
        info[module] = {"dim": s.dim, "count": s.count, "rest": s.rest}
        if s.full is not None:
            tensors[f"{module}.cov"] = s.full.float().contiguous()
        else:
            tensors[f"{module}.eigvecs"] = s.eigvecs.float().contiguous()
            tensors[f"{module}.eigvals"] = s.eigvals.float().contiguous()
    metadata = {STATS_FORMAT: STATS_VERSION, "modules": json.dumps(info, sort_keys=True)}
    return stfile.write(path, tensors, metadata)


def load_stats(path: str | Path) -> dict[str, InputStats]:
    """Read a statistics file; raises CompressError if it is not one or is inconsistent."""
    tensors, metadata = stfile.load(path)
    if metadata.get(STATS_FORMAT) != STATS_VERSION:
        raise CompressError(f"{path}: not an input-statistics file (version {STATS_VERSION})")
    try:
        info = json.loads(metadata["modules"])
        result = {
            module: InputStats(
                dim=int(entry["dim"]),
                count=int(entry["count"]),
                full=tensors.get(f"{module}.cov"),
                eigvecs=tensors.get(f"{module}.eigvecs"),
                eigvals=tensors.get(f"{module}.eigvals"),
                rest=float(entry["rest"]),
            )
            for module, entry in info.items()
        }
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise CompressError(f"{path}: inconsistent input statistics ({exc})") from None
    return result


PEFT_PREFIX = "base_model.model."


def _strip(name: str) -> str:
    return name[len(PEFT_PREFIX) :] if name.startswith(PEFT_PREFIX) else name


class StatsCollector:
    """Accumulates sum x x^T over the inputs of chosen modules, via forward pre-hooks.

    Module names are PEFT module paths ("model.layers.0.self_attn.q_proj"); a PeftModel's own prefix
    is ignored, so the same names work on the base model and on the model with an adapter (where the
    hook sits on the LoRA wrapper, whose input is the original layer's input). Set
    `token_mask` ([batch, seq] bool) before a forward pass to leave padding out.
    """

    def __init__(self, model: torch.nn.Module, modules: Iterable[str]):
        wanted = set(modules)
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.token_mask: torch.Tensor | None = None
        self._handles = []
        found = set()
        for name, module in model.named_modules():
            short = _strip(name)
            if short in wanted and short not in found:
                found.add(short)
                self._handles.append(module.register_forward_pre_hook(self._hook(short)))
        missing = wanted - found
        if missing:
            self.close()
            raise CompressError(f"modules not found in the model: {', '.join(sorted(missing)[:5])}")

    def _hook(self, name: str):
        def hook(module, args):
            x = args[0].detach()
            if self.token_mask is not None and x.dim() == 3 and x.shape[:2] == self.token_mask.shape:
                x = x[self.token_mask.to(x.device)]
            x = x.reshape(-1, x.shape[-1]).double()  # [tokens, in]
            gram = x.T @ x
            if name in self.sums:
                self.sums[name] += gram
            else:
                self.sums[name] = gram
            self.counts[name] = self.counts.get(name, 0) + x.shape[0]

        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def result(self, max_rank: int = DEFAULT_MAX_RANK) -> dict[str, InputStats]:
        out = {}
        for name, total in self.sums.items():
            count = max(1, self.counts[name])
            cov = (total / count).float().cpu()
            out[name] = InputStats(dim=cov.shape[0], count=count, full=cov).compact(max_rank)
        return out


@contextmanager
def collecting(model: torch.nn.Module, modules: Iterable[str]) -> Iterator[StatsCollector]:
    collector = StatsCollector(model, modules)
    try:
        yield collector
    finally:
        collector.close()
