"""The fidelity gate: when a compressed adapter may be served instead of its lossless source.

With a base model, the gate judges behaviour: top-1 agreement with the original adapter on held-out
predictions (one per text for a classifier, one per token for a language model), on the lower end of a
Wilson confidence interval rather than on the point estimate, so a lucky small sample cannot pass,
and only when there are enough predictions to tell 0.99 from 0.96. Without a base model (or with too
few predictions) it judges a data-free proxy: the energy-weighted relative error of delta-W, whose
default threshold comes from the fidelity benchmark (bench/RESULTS.md, "The data-free gate").
The verdict records its basis, the number of predictions it rests on, the estimate and the bound.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

# Largest energy-weighted relative error of delta-W at which every adapter of the fidelity benchmark
# kept held-out agreement >= 0.99 (bench/RESULTS.md, "The data-free gate"). The binding case is an
# adapter on a randomly initialised base (near-uniform logits: 0.9917 at 0.0036, 0.9868 at 0.0080);
# adapters on pretrained bases kept 0.99 up to 0.05 (a small LM) and further (MiniLM).
DATA_FREE_MAX_WEIGHT_ERROR = 0.004
# Below this many held-out predictions agreement is too noisy to pass on (the 95% bound of a perfect
# score on 300 predictions is 0.991).
MIN_PREDICTIONS_FLOOR = 300
DEFAULT_PREDICTIONS = 2000

BASIS_AGREEMENT = "held-out agreement"
BASIS_DATA_FREE = "data-free proxy: weight error"


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The one-sided Wilson score bounds (lower, upper) of a binomial proportion at `confidence`."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, {n}], got {successes}")
    z = NormalDist().inv_cdf(confidence)
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    return max(0.0, (centre - spread) / denominator), min(1.0, (centre + spread) / denominator)


@dataclass(frozen=True)
class Gate:
    """Thresholds a compressed adapter must meet to be stored instead of its lossless source."""

    min_agreement: float | None = 0.99  # least top-1 agreement (its lower confidence bound), held out
    max_kl: float | None = None  # largest mean KL(original || compressed) per prediction, held out
    max_weight_error: float | None = DATA_FREE_MAX_WEIGHT_ERROR  # the data-free proxy
    confidence: float = 0.95  # of the one-sided lower bound on agreement
    min_predictions: int = MIN_PREDICTIONS_FLOOR  # fewer held-out predictions: judged data-free

    def __post_init__(self) -> None:
        for name in ("min_agreement", "max_kl", "max_weight_error"):
            value = getattr(self, name)
            if value is not None and not (
                isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
            ):
                raise ValueError(f"gate threshold {name} must be a non-negative number or None")
        if self.min_agreement is not None and self.min_agreement > 1:
            raise ValueError("min_agreement is a fraction in [0, 1]")
        if not 0.5 <= self.confidence < 1:
            raise ValueError("confidence must lie in [0.5, 1)")
        if not isinstance(self.min_predictions, int) or self.min_predictions < MIN_PREDICTIONS_FLOOR:
            raise ValueError(f"min_predictions must be an integer >= {MIN_PREDICTIONS_FLOOR}")

    def check(self, fidelity: dict[str, Any]) -> dict[str, Any]:
        """The verdict on a compressed adapter's measured fidelity (see the module docstring)."""
        held = fidelity.get("held_out") or {}
        n = int(held.get("predictions") or 0)
        verdict: dict[str, Any] = {"thresholds": asdict(self)}
        failures: list[str] = []
        if "agreement" in held and n >= self.min_predictions:
            lower, _ = wilson_interval(round(held["agreement"] * n), n, self.confidence)
            verdict.update(
                basis=BASIS_AGREEMENT,
                data_free=False,
                predictions=n,
                estimate=held["agreement"],
                bound=round(lower, 6),
            )
            if self.min_agreement is not None and lower < self.min_agreement:
                failures.append(
                    f"agreement {held['agreement']:.4f} (lower {self.confidence:.0%} bound {lower:.4f} "
                    f"over {n} predictions) < {self.min_agreement}"
                )
            if self.max_kl is not None and held["kl"] > self.max_kl:
                failures.append(f"KL {held['kl']:.4g} > {self.max_kl}")
        else:
            error = float(fidelity.get("weight_rel_error", 1.0))
            verdict.update(basis=BASIS_DATA_FREE, data_free=True, predictions=n, estimate=error)
            if "agreement" in held:
                # Too few predictions to pass on, but enough to fail on: the upper bound is evidence.
                _, upper = wilson_interval(round(held["agreement"] * n), n, self.confidence)
                verdict["note"] = f"only {n} held-out predictions (< {self.min_predictions})"
                if self.min_agreement is not None and upper < self.min_agreement:
                    failures.append(
                        f"agreement {held['agreement']:.4f} (upper bound {upper:.4f} over {n} "
                        f"predictions) < {self.min_agreement}"
                    )
            if self.max_weight_error is not None and error > self.max_weight_error:
                failures.append(f"weight error {error:.4f} > {self.max_weight_error}")
        verdict["passed"] = not failures
        verdict["reason"] = "; ".join(failures) if failures else "within thresholds"
        return verdict
