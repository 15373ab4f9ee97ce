"""
What each process does in the multi-process tests: label an odd-sized pool (`label`) or run self-training end to end
(`train`), and dump what it saw to `<out_dir>/rank-<process index>.json` for the test to compare.

    accelerate launch --multi_gpu --num_processes 2 --main_process_port 29517 tests/scripts/distributed_run.py label OUT_DIR

The tests also call `run` directly, in one process and under `accelerate.test_utils.debug_launcher`.
"""

import hashlib
import json
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

POOL_SIZE = 101  # odd, and not a multiple of the batch size times the world size: the last batches are ragged
BATCH_SIZE = 8


def build_trainer(out_dir, unlabeled, eval_dataset=None, model=None, **config):
    from conftest import make_model, make_tokenizer, tiny_config, toy_dataset

    from hf_semisup import SemiSupervisedTrainer

    tokenizer_dir = os.path.join(out_dir, "tokenizer")
    os.makedirs(tokenizer_dir, exist_ok=True)
    defaults = dict(self_training_rounds=0, per_device_eval_batch_size=BATCH_SIZE, pseudo_label_top_k=2)
    defaults.update(config)
    return SemiSupervisedTrainer(
        model=model if model is not None else make_model(seed=0),
        args=tiny_config(os.path.join(out_dir, "output"), **defaults),
        train_dataset=toy_dataset(48, seed=1),
        eval_dataset=eval_dataset,
        processing_class=make_tokenizer(tokenizer_dir),
        unlabeled_dataset=unlabeled,
    )


def labeled_rows(dataset) -> dict:
    columns = ("pseudo_label", "confidence", "top_k_labels", "top_k_probabilities")
    rows = list(dataset)
    return {c: [row[c] for row in rows] for c in columns if c in rows[0]}


def label(out_dir) -> dict:
    """Pseudo-label an odd-sized pool held as a `Dataset` and streamed as an `IterableDataset`."""
    from conftest import make_model, toy_dataset

    pool = toy_dataset(POOL_SIZE, seed=2).remove_columns("label")
    # Large random weights: an untrained model whose predictions split between the classes at varied confidences.
    trainer = build_trainer(
        out_dir,
        pool,
        model=make_model(seed=2, initializer_range=0.5),
        self_training_rounds=1,  # never trained here; the class prototypes label round 1
        first_teacher="embeddings",
    )
    return {
        "dataset": labeled_rows(trainer.pseudo_label()),
        "iterable": labeled_rows(trainer.pseudo_label(pool.to_iterable_dataset(num_shards=3))),
        "prototypes": prototype_labels(trainer),
        "prototypes_iterable": prototype_labels(trainer, streamed=True),
    }


def prototype_labels(trainer, streamed=False) -> dict:
    """
    The class prototypes (48 labeled rows: ragged batches per process), refined with the pool rows round 1 keeps, and
    the pool's labels by them; `streamed`: with the pool read as a stream.
    """
    from hf_semisup.rounds import RoundLoop
    from hf_semisup.teachers import PrototypeTeacher

    context = RoundLoop(trainer, trainer.run_state).labeling_context(1)
    context.top_k = 2
    if streamed:
        context.pool = context.pool.to_iterable_dataset(num_shards=3)
    pseudo_labels = PrototypeTeacher().label(context)
    return {
        "pseudo_label": pseudo_labels.labels.tolist(),
        "confidence": pseudo_labels.confidences.tolist(),
        "top_k_labels": pseudo_labels.top_k_labels.tolist(),
        "top_k_probabilities": pseudo_labels.top_k_probabilities.tolist(),
    }


def train(out_dir) -> dict:
    """
    Two rounds of self-training with the consistency loss on; records the history, the files this process wrote, the
    final weights and the consistency metrics it logged.
    """
    from conftest import make_model, toy_dataset

    written = []
    replace = os.replace

    def recording_replace(src, dst, *args, **kwargs):
        path = os.path.relpath(str(dst), out_dir)
        if path.startswith("output" + os.sep):  # the trainer's files, not the test's own tokenizer vocabulary
            written.append(path)
        return replace(src, dst, *args, **kwargs)

    os.replace = recording_replace
    try:
        pool = toy_dataset(POOL_SIZE, seed=2)
        trainer = build_trainer(
            out_dir,
            pool,
            eval_dataset=toy_dataset(20, seed=3),
            # Varied, confident predictions after a few steps, so every round selects pseudo-labels.
            model=make_model(seed=2, initializer_range=0.5),
            self_training_rounds=2,
            confidence_threshold=0.6,
            class_balance=False,
            max_pseudo_labels=40,
            num_train_epochs=4,
            per_device_train_batch_size=4,
            eval_strategy="no",
            consistency_weight=1.0,
            token_dropout=0.2,
            logging_steps=2,
        )
        trainer.train()
        final = labeled_rows(trainer.pseudo_label())
    finally:
        os.replace = replace
    weights = hashlib.sha256()
    for name, tensor in sorted(trainer.model.state_dict().items()):
        weights.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    return {
        "history": trainer.self_training_history,
        "written": written,
        "final": final,
        "weights": weights.hexdigest(),
        "consistency_logs": [
            {k: v for k, v in log.items() if k.startswith(("consistency", "token_dropout"))}
            for log in trainer.state.log_history
            if "consistency_loss" in log
        ],
    }


def auto(out_dir) -> dict:
    """One round with `first_teacher="auto"`: every process trains the fold models and must reach the same choice."""
    from conftest import make_model, toy_dataset

    trainer = build_trainer(
        out_dir, toy_dataset(POOL_SIZE, seed=2), model=make_model(seed=2, initializer_range=0.5),
        self_training_rounds=1, first_teacher="auto", selection_strategy="topk", max_steps=4,
        per_device_train_batch_size=4, eval_strategy="no",
    )  # fmt: skip
    trainer.train()
    weights = hashlib.sha256()
    for name, tensor in sorted(trainer.model.state_dict().items()):
        weights.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    return {"history": trainer.self_training_history, "weights": weights.hexdigest()}


def config(out_dir):
    """What a config built as a user would (no `use_cpu`) says about the launch."""
    from hf_semisup import SemiSupervisedConfig

    args = SemiSupervisedConfig(output_dir=os.path.join(out_dir, "output"), report_to="none")
    return {"use_cpu": args.use_cpu, "parallel_mode": args.parallel_mode.value, "args_world_size": args.world_size}


def run(mode, out_dir):
    """Run `mode` in this process and dump its result; under `debug_launcher`, forget the parent's Accelerate state."""
    import torch
    import torch.distributed as dist
    from accelerate.state import AcceleratorState

    if os.environ.get("FORK_LAUNCHED"):
        # A forked child inherits the parent's Accelerate singletons, and its OpenMP pool, which deadlocks in the
        # child's first parallel kernel once the parent has used it: one thread per process avoids that pool.
        AcceleratorState._reset_state(reset_partial_state=True)
        os.environ["OMP_NUM_THREADS"] = "1"  # or Accelerate raises it again
        torch.set_num_threads(1)
    result = {"label": label, "train": train, "auto": auto, "config": config}[mode](out_dir)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    result["world_size"] = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    with open(os.path.join(out_dir, f"rank-{rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])
