"""
Saving and the Hub for [`SemiSupervisedTrainer`]: what a final save writes beside the model, and what a failed
connection to the Hub says (what an upload leaves out: `outputs.py`).
"""

import os

from .adapters import is_peft_model, save_merged_model
from .checkpointing import write_json_atomic
from .model_card import write_model_card
from .outputs import HISTORY_NAME, is_checkpoint_dir


def save_with_history_and_card(trainer, output_dir: str, save_model):
    """
    Save `trainer`'s model with `save_model` (`Trainer.save_model`), or merged with its adapter when
    `save_merged_model` is set; outside a checkpoint folder, also `self_training_history.json` and the model card.
    """
    args = trainer.args
    # Checkpoints keep the adapter so training can resume from them; the card describes a finished model.
    final = not is_checkpoint_dir(output_dir)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if final and args.save_merged_model and is_peft_model(model):
        if args.should_save:
            save_merged_model(model, output_dir, tokenizer=trainer.processing_class, training_args=args)
    else:
        save_model(output_dir, _internal_call=True)
    if final and trainer.is_world_process_zero():
        write_json_atomic(os.path.join(output_dir, HISTORY_NAME), trainer.self_training_history)
        if getattr(model, "config", None) is not None:  # a plain `torch.nn.Module` has no classes to describe
            write_model_card(trainer, output_dir)


def hub_unreachable_error(error: Exception, args) -> ValueError:
    """One line for `push_to_hub=True` when the repo cannot be created or reached (offline, no token, no right)."""
    repo = args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))
    reason = next(iter(str(error).strip().splitlines()), "") or type(error).__name__
    return ValueError(
        f"`push_to_hub`=True, but the Hub repo {repo!r} could not be created or reached ({type(error).__name__}: "
        f"{reason}). Check the network and the token (`hub_token` or `hf auth login`), or set `push_to_hub=False` "
        "and push later."
    )
