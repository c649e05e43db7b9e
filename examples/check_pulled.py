"""Load the original and the pulled adapter with PEFT on the same base model and compare outputs."""

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
    tokens = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))

    def logits(adapter: Path) -> torch.Tensor:
        model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(args.base), str(adapter)
        ).eval()
        with torch.no_grad():
            return model(tokens).logits

    original, pulled = logits(args.original), logits(args.pulled)
    same = torch.equal(original, pulled)
    print(
        f"loaded {args.pulled} with PeftModel.from_pretrained: outputs identical to the original: {same} "
        f"(max abs difference {(original - pulled).abs().max().item():.3g})"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
