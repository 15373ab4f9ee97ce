"""
The run's only mutable state: where the round loop stands, what it has recorded, and the weights it keeps. Everything
else a round does is a function of its inputs. `checkpointing.py` saves and restores it whole.
"""

import dataclasses

import torch

from .adapters import is_peft_model, load_trainable_state, trainable_state


# Order of the phases within a round; "done" marks a finished run.
PHASES = ("labeling", "selecting", "fitting", "done")


@dataclasses.dataclass
class RunState:
    r"""
    Where a self-training run stands. The fields up to `train_output` are saved with every checkpoint
    (`self_training_state.json`); the others are rebuilt on resume.

    Args:
        round (`int`):
            The round the run is in, or starts next.
        phase (`str`):
            What that round does next: `"labeling"` (the teacher labels the pool), `"selecting"`, `"fitting"` (the
            student trains, `step` optimizer steps done), or `"done"` (the run is finished).
        step (`int`, *optional*, defaults to `0`):
            Optimizer steps done in the round (the Trainer's `global_step`) at the last save.
        history (`list[dict]`):
            The records of the finished rounds, as in `self_training_history.json`.
        loss_sum (`float` or `None`):
            Sum of the round's training losses over its steps so far, so the round's `train_loss` covers the steps
            before a resume (`None`: take the Trainer's own, for a plain checkpoint of unknown losses).
        pseudo_labels_file (`str` or `None`):
            The round's saved labeling pass and selection (`self_training_pseudo_labels.npz`), relative to `output_dir`.
        best_round, best_metric:
            The best round so far by `metric_for_best_model` (with `load_best_model_at_end`), and its value.
        seed (`int`):
            `args.seed` of the run.
        train_output (`dict` or `None`):
            With phase `"done"`: the [`~transformers.trainer_utils.TrainOutput`] that `train()` returned.
        teacher_notes (`dict` or `None`):
            What the current round's teacher noted when it labeled the pool (see `LabelingContext.notes`), for the
            round's record.
        record (`dict` or `None`):
            The current round's record, until it joins `history`.
        model_round (`int` or `None`):
            The round whose model the trainer holds once the current round has ended (the previous one after a
            rollback).
        weights (`dict`):
            Weights kept in memory, by role: `"initial"` (the model before training, for `student_init="reset"` and
            teachers that start from it), `"best"` (the best round's, while a later round trains) and `"previous"`
            (the last round's, for `rollback_on_worse_eval`).
    """

    round: int = 0
    phase: str = "labeling"
    step: int = 0
    history: list = dataclasses.field(default_factory=list)
    loss_sum: float | None = 0.0
    pseudo_labels_file: str | None = None
    best_round: int | None = None
    best_metric: float | None = None
    seed: int | None = None
    train_output: dict | None = None
    teacher_notes: dict | None = None
    # Not saved
    record: dict | None = None
    model_round: int | None = None
    weights: dict = dataclasses.field(default_factory=dict)

    SAVED_FIELDS = (
        "round",
        "phase",
        "step",
        "history",
        "loss_sum",
        "pseudo_labels_file",
        "best_round",
        "best_metric",
        "seed",
        "train_output",
        "teacher_notes",
    )

    @property
    def position(self) -> tuple[int, int, int]:
        """Orders states along a run: by round, then phase, then step."""
        return (self.round, PHASES.index(self.phase), self.step)

    def saved(self) -> dict:
        """The fields a checkpoint holds, as JSON-ready values."""
        return {name: getattr(self, name) for name in self.SAVED_FIELDS}

    @classmethod
    def from_saved(cls, payload: dict) -> "RunState":
        unknown = sorted(set(payload) - set(cls.SAVED_FIELDS))
        if unknown:
            raise ValueError(f"Unknown self-training state fields {unknown}.")
        return cls(**payload)

    def start_over(self):
        """A new run: everything back to its start but the initial weights."""
        initial = self.weights.get("initial")
        fresh = RunState(seed=self.seed)
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(fresh, field.name))
        if initial is not None:
            self.weights["initial"] = initial

    def restore(self, saved: "RunState"):
        """Take over the saved fields of `saved` (a resume)."""
        for name in self.SAVED_FIELDS:
            setattr(self, name, getattr(saved, name))
        self.history = [dict(record) for record in saved.history]

    def enter_round(self, round_: int):
        """Start round `round_` from its labeling pass."""
        self.round, self.phase, self.step = round_, "labeling", 0
        self.loss_sum, self.pseudo_labels_file, self.teacher_notes = 0.0, None, None

    def finish(self, train_output: dict):
        self.phase, self.step, self.train_output = "done", 0, train_output
        self.loss_sum, self.pseudo_labels_file, self.teacher_notes = 0.0, None, None

    def logged_step_offset(self) -> int:
        """The optimizer steps of the rounds before the current one."""
        return sum(r.get("train_steps", 0) for r in self.history if r["round"] < self.round)


# ---- Weights ----------------------------------------------------------------------------------------------------------
def copy_weights(model) -> dict[str, torch.Tensor]:
    """A CPU copy of what training changes: the whole state, or the adapter and head of a PEFT model (its frozen base
    is a multiple of their size)."""
    if is_peft_model(model):
        return trainable_state(model)
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def load_weights(model, weights: dict[str, torch.Tensor]):
    """Load a [`copy_weights`] copy back."""
    if is_peft_model(model):
        load_trainable_state(model, weights)
    else:
        model.load_state_dict(weights)
