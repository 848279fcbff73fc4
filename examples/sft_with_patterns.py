"""An ordinary TRL fine-tuning script, with headway's PatternCallback added (two lines).

    python examples/sft_with_patterns.py --model HuggingFaceTB/SmolLM2-135M-Instruct
    python examples/sft_with_patterns.py --model path/to/model --max-steps 20

The callback records the probe task's activation pattern and each head's parameter change
every few steps into OUTPUT_DIR/headway/, and adds headway/<probe>/{loss,gini,delta_norm} to
the Trainer's logs. Afterwards:

    headway analyze --runs OUTPUT_DIR/headway -o OUTPUT_DIR/analysis
    headway report OUTPUT_DIR/analysis
"""

import argparse
import random

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

import headway


def arithmetic_rows(n: int, seed: int) -> list[dict]:
    """Prompt/completion rows of two-number sums (any dataset with such columns will do)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        rows.append({"prompt": f"What is {a} + {b}?", "completion": f" {a + b}"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="hub id or local model folder")
    parser.add_argument("--output-dir", default="runs/sft-example")
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10, help="record every N steps")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    train = Dataset.from_list(arithmetic_rows(256, seed=0))
    probe = arithmetic_rows(16, seed=1)  # held-out rows, the same at every record

    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(output_dir=args.output_dir, max_steps=args.max_steps,
                       per_device_train_batch_size=8, learning_rate=5e-5, logging_steps=5,
                       report_to="none", save_strategy="no",
                       use_cpu=not torch.cuda.is_available()),
        train_dataset=train,
        processing_class=tokenizer,
    )
    # headway: record the probe's pattern every `every` steps (and log through the trainer)
    # template="raw": the probe rows are encoded as the trainer sees them (prompt + completion)
    headway.PatternCallback({"arithmetic": probe}, tokenizer, every=args.every,
                            template="raw").attach(trainer)
    trainer.train()

    last = [h for h in trainer.state.log_history if "headway/arithmetic/gini" in h][-1]
    print(f"step {last['step']}: probe loss {last['headway/arithmetic/loss']:.3f}, "
          f"Gini {last['headway/arithmetic/gini']:.3f}, "
          f"‖ΔAP‖ {last['headway/arithmetic/delta_norm']:.4f}; "
          f"records in {args.output_dir}/headway")


if __name__ == "__main__":
    main()
