"""Load the original and the pulled adapter with PEFT on the same base model and compare their outputs:
top-1 agreement on next-token predictions (a compressed pull is close, not identical)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--original", type=Path, required=True)
    parser.add_argument("--pulled", type=Path, required=True)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    # 64 random sequences of 32 tokens: 2,048 next-token predictions to compare.
    tokens = torch.randint(0, 128, (64, 32), generator=torch.Generator().manual_seed(0))

    def logits(adapter: Path | None) -> torch.Tensor:
        model = AutoModelForCausalLM.from_pretrained(args.base)
        if adapter is not None:
            model = PeftModel.from_pretrained(model, str(adapter))
        with torch.no_grad():
            return model.eval()(tokens).logits

    base, original, pulled = logits(None), logits(args.original), logits(args.pulled)
    agreement = (original.argmax(-1) == pulled.argmax(-1)).float().mean().item()
    # How much of what the adapter changes in the outputs the pulled copy does not reproduce.
    residual = ((pulled - original).norm() / (original - base).norm()).item()
    print(
        f"loaded {args.pulled} with PeftModel.from_pretrained: top-1 agreement with the original "
        f"{agreement:.4f} over {tokens.numel()} next-token predictions; relative error of the "
        f"adapter's effect on the logits {residual:.4f}"
    )
    return 0 if agreement >= 0.99 else 1


if __name__ == "__main__":
    sys.exit(main())
