"""
A 2-process consistency-regularized training run, for `tests/test_consistency.py::test_two_process_training`:

    accelerate launch --multi_gpu --num_processes 2 tests/consistency_ddp_run.py OUTPUT_DIR CONFIDENCE

Each process writes `OUTPUT_DIR/rank{rank}.pt`: its final parameters, the unlabeled rows it drew and the log history.
"""

import os
import sys

import torch


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import make_tokenizer  # noqa: E402
from test_consistency import consistency_trainer  # noqa: E402


def main():
    output_dir, confidence = sys.argv[1], float(sys.argv[2])
    tokenizer = make_tokenizer(output_dir)
    trainer = consistency_trainer(
        output_dir, tokenizer, per_device_train_batch_size=4, consistency_confidence=confidence
    )
    drawn = []
    draw = trainer.consistency.unlabeled_batch

    def recording_draw(k, round_):
        batch, positions = draw(k, round_)
        drawn.append(trainer.consistency.sampler.indices(k))
        return batch, positions

    trainer.consistency.unlabeled_batch = recording_draw
    trainer.train()
    rank = trainer.accelerator.process_index
    torch.save(
        {
            "world_size": trainer.accelerator.num_processes,
            "parameters": {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
            "rows": drawn,
            "log_history": trainer.state.log_history,
        },
        os.path.join(output_dir, f"rank{rank}.pt"),
    )


if __name__ == "__main__":
    main()
