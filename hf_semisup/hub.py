"""
Saving and the Hub for [`SemiSupervisedTrainer`]: what `save_model` writes beside the model (the round history, the
model card, a merged PEFT model), and what `push_to_hub` leaves out (round checkpoints, pseudo-label files).
"""

import os

import torch
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .adapters import is_peft_model, save_merged_model
from .checkpointing import write_json_atomic
from .compat import upload_ignoring
from .model_card import write_model_card
from .pseudo_labeling import PSEUDO_LABELS_DIR
from .rounds import HISTORY_NAME


# Round checkpoints and pseudo-label files (with the tokenized pool's cache) are working files, not the model.
HUB_IGNORE_PATTERNS = ["round-*", f"{PSEUDO_LABELS_DIR}/*"]


class HubMixin:
    """
    [`~transformers.Trainer`]'s saving and Hub methods as [`SemiSupervisedTrainer`] extends them (it provides `args`,
    `model` and `self_training_history`).
    """

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """
        Save the model (the adapter with PEFT, or the merged model if `args.save_merged_model`) and tokenizer; outside
        checkpoints also `self_training_history.json` and the model card. Pushes when `args.push_to_hub` is set.
        """
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        # Checkpoints keep the adapter so training can resume from them; the card describes a finished model.
        final = not os.path.basename(os.path.normpath(output_dir)).startswith(f"{PREFIX_CHECKPOINT_DIR}-")
        model = self.accelerator.unwrap_model(self.model)
        if final and self.args.save_merged_model and is_peft_model(model):
            if self.args.should_save:
                os.makedirs(output_dir, exist_ok=True)
                save_merged_model(model, output_dir)
                if self.processing_class is not None:
                    self.processing_class.save_pretrained(output_dir)
                torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        else:
            super().save_model(output_dir, _internal_call=True)
        if final and self.is_world_process_zero():
            write_json_atomic(os.path.join(output_dir, HISTORY_NAME), self.self_training_history)
            write_model_card(self, output_dir)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """[`~transformers.Trainer.init_hf_repo`], its failure (offline, no token, no right to the repo) in one line."""
        try:
            super().init_hf_repo(token=token, private=private)
        except Exception as error:  # `huggingface_hub` and `httpx` errors share no base class short of `Exception`
            repo = self.args.hub_model_id or os.path.basename(os.path.abspath(self.args.output_dir))
            reason = next(iter(str(error).strip().splitlines()), "") or type(error).__name__
            raise ValueError(
                f"`push_to_hub`=True, but the Hub repo {repo!r} could not be created or reached ({type(error).__name__}: "
                f"{reason}). Check the network and the token (`hub_token` or `hf auth login`), or set "
                "`push_to_hub=False` and push later."
            ) from error

    def push_to_hub(self, *args, **kwargs):
        with upload_ignoring(HUB_IGNORE_PATTERNS):
            return super().push_to_hub(*args, **kwargs)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        with upload_ignoring(HUB_IGNORE_PATTERNS):
            return super()._push_from_checkpoint(checkpoint_folder)

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ):
        """
        Write the semi-supervised model card to `output_dir/README.md` (main process only); see
        [`~hf_semisup.model_card.build_model_card`] for the arguments. `tasks` is ignored: the task is always
        text classification.
        """
        if not self.is_world_process_zero():
            return
        write_model_card(
            self,
            self.args.output_dir,
            language=language,
            license=license,
            tags=tags,
            model_name=model_name,
            finetuned_from=finetuned_from,
            dataset_tags=dataset_tags,
            dataset=dataset,
            dataset_args=dataset_args,
        )
