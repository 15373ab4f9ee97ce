"""The `hf-semisup` command line."""

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hf-semisup", description="Semi-supervised fine-tuning of text classifiers.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="Offline demo: 16 labels per class + unlabeled movie snippets, supervised-only vs self-training.",
    )
    demo.add_argument("--output_dir", default="hf-semisup-demo", help="Where the two models are written.")
    demo.add_argument("--num_labeled_per_class", type=int, default=16, help="Labeled examples per class.")
    demo.add_argument("--num_unlabeled", type=int, default=1500, help="Size of the unlabeled pool.")
    demo.add_argument("--self_training_rounds", type=int, default=2, help="Pseudo-labeling rounds.")
    demo.add_argument("--seed", type=int, default=0, help="Seed for label sampling and training.")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .demo import run_demo

        run_demo(**{k: v for k, v in vars(args).items() if k != "command"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
