"""Copy a trained grounded adapter into the package: weights in float16, its config, a train_result.json.

    .venv/bin/python examples/grounded/package.py data/adapters/grounded --log train.log \
        --command "inferag weights finetune ..." --dataset "examples/grounded/build.py ..."

The finetune run writes its best adapter (lowest validation loss) to its `--out` folder after every
improving evaluation; this stores that adapter's weights in float16 (half the size; the largest weight of
a LoRA this size is far inside float16's range, checked here) in
`services/generation/adapters/grounded-smollm2/`, with `adapter_config.json` and a `train_result.json`
that says how it was trained: from the folder's own `train_result.json` when the run finished, else from
the run's log (`--log`, the `step=... val_loss=...` lines `inferag weights finetune` prints).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
PACKAGED = ROOT / "services" / "generation" / "adapters" / "grounded-smollm2"


def from_log(text: str) -> dict[str, object]:
    """Steps, losses and example counts from the lines a finetune run prints."""
    records = [dict(kv.split("=", 1) for kv in line.split()) for line in text.splitlines()
               if re.match(r"^step=\d+ ", line)]  # fmt: skip
    vals = [(int(r["step"]), float(r["val_loss"])) for r in records if "val_loss" in r]
    first = records[0] if records else {}
    best_step, best = min(vals, key=lambda sv: sv[1]) if vals else (0, float("nan"))
    return {
        "steps": max((int(r["step"]) for r in records), default=0),
        "best_step": best_step,
        "train_examples": int(first.get("train_examples", 0)),
        "val_examples": int(first.get("val_examples", 0)),
        "initial_val_loss": vals[0][1] if vals else float("nan"),
        "best_val_loss": best,
        "val_losses": [{"step": s, "val_loss": round(v, 4)} for s, v in vals],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("adapter", type=Path, help="the finetune run's --out folder")
    ap.add_argument("--log", type=Path, help="the run's printed log (when it did not finish)")
    ap.add_argument("--command", required=True, help="the finetune command that trained it")
    ap.add_argument("--dataset", required=True, help="the build.py command that wrote its dataset")
    ap.add_argument("--note", default="", help="anything else a reader should know")
    args = ap.parse_args()

    weights = load_file(str(args.adapter / "adapter_model.safetensors"))
    largest = max(float(w.abs().max()) for w in weights.values())
    if largest > 6e4:
        raise SystemExit(f"a weight of {largest} does not fit float16")
    PACKAGED.mkdir(parents=True, exist_ok=True)
    save_file({k: w.to(torch.float16).contiguous() for k, w in weights.items()},
              str(PACKAGED / "adapter_model.safetensors"))  # fmt: skip
    shutil.copyfile(args.adapter / "adapter_config.json", PACKAGED / "adapter_config.json")
    finished = args.adapter / "train_result.json"
    if finished.is_file():
        run = json.loads(finished.read_text())
        result = {k: run[k] for k in ("steps", "epochs", "train_examples", "val_examples", "initial_val_loss",
                                      "best_val_loss", "val_losses", "stopped_early", "seconds")}  # fmt: skip
    elif args.log is not None:
        result = from_log(args.log.read_text())
    else:
        raise SystemExit("the run did not finish (no train_result.json): pass its log with --log")
    record = {"note": args.note, "command": args.command, "dataset": args.dataset, **result,
              "largest_weight": round(largest, 4), "stored_as": "float16"}  # fmt: skip
    (PACKAGED / "train_result.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
