"""Guard rails that stop or flag a self-training run going wrong: non-finite values, and pseudo-label collapse."""

import logging

import numpy as np
import torch


logger = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss or non-finite weights; the run stops before anything non-finite is saved."""


def gathered_loss(loss: torch.Tensor, accelerator) -> float:
    """
    The step's loss averaged over processes, as a Python float.

    Every process gets the same value, so a non-finite loss on any one of them stops all of them at the same step
    (a single process raising would leave the others waiting in the next collective).
    """
    loss = loss.detach().float().reshape(1)
    if accelerator.num_processes > 1:
        loss = accelerator.gather(loss)
    return loss.mean().item()


def first_non_finite_parameter(model: torch.nn.Module) -> str | None:
    """The name of the first parameter or buffer holding a NaN or infinity, or `None`."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return name
    return None


def check_finite_model(model: torch.nn.Module, where: str):
    """Raise [`NonFiniteError`] if any weight of `model` is NaN or infinite."""
    name = first_non_finite_parameter(model)
    if name is not None:
        raise NonFiniteError(
            f"{where}: the model's weights are not finite (first: {name!r}); nothing is saved. Lower `learning_rate`, "
            "set `max_grad_norm`, or check the inputs."
        )


def collapse_alarm(class_counts, class_prior, margin: float | None) -> tuple[int, float] | None:
    """
    Whether a round's accepted pseudo-labels collapsed onto one class.

    The rule: the alarm fires when some class's share of the accepted pseudo-labels exceeds its share of the labeled
    set by more than `margin` (e.g. with a 50/50 labeled set and `margin=0.3`, when more than 80% of the accepted
    pseudo-labels are one class). Selection with `class_balance=True` keeps the labeled shares, so it never fires then.

    Returns:
        `(class_id, share)` of the class furthest above its labeled share when the alarm fires, else `None`.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    if margin is None or counts.sum() == 0:
        return None
    prior = np.asarray(class_prior, dtype=np.float64)
    shares = counts / counts.sum()
    excess = shares - prior / prior.sum()
    class_id = int(np.argmax(excess))
    if excess[class_id] > margin:
        return class_id, float(shares[class_id])
    return None


def check_collapse(
    record: dict,
    class_counts: list[int],
    class_prior,
    margin: float | None,
    class_names: list[str],
    class_balance: bool,
    pool_prior: bool = False,
):
    """
    Record (`collapse_alarm`, `collapse_alarm_class`, `collapse_alarm_share`) and warn about a collapsed round.
    `pool_prior`: class balance kept the pool's estimated shares (`class_balance_prior="pool"`), not the labeled ones.
    """
    alarm = collapse_alarm(class_counts, class_prior, margin)
    record["collapse_alarm"] = alarm is not None
    if alarm is None:
        return
    class_id, share = alarm
    name = class_names[class_id]
    record["collapse_alarm_class"], record["collapse_alarm_share"] = name, share
    logger.warning(
        f"Round {record['round']}: pseudo-label collapse alarm: {share:.0%} of the {sum(class_counts)} accepted "
        f"pseudo-labels are {name!r}, whose labeled share is {class_prior[class_id]:.0%} (more than "
        f"`collapse_alarm_margin`={margin} above it)."
        + (
            " Class balance kept the pool's class shares as the teacher's pass estimates them "
            "(`class_balance_prior='pool'`): if the pool is not that skewed, the teacher is."
            if pool_prior
            else ""
            if class_balance
            else " Consider `class_balance=True`, which keeps the labeled shares."
        )
    )
