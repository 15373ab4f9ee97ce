"""The end-of-training summary of a self-training run: a per-round table and a PNG chart of the same."""


def summary_metric(history: list[dict], metric_for_best_model: str | None = None) -> str | None:
    """The eval metric the summary shows: `metric_for_best_model` when set, else accuracy, F1 or loss."""
    preferred = []
    if metric_for_best_model:
        preferred.append(
            metric_for_best_model if metric_for_best_model.startswith("eval_") else f"eval_{metric_for_best_model}"
        )
    preferred += ["eval_accuracy", "eval_f1", "eval_loss"]
    return next((key for key in preferred if history and key in history[0]), None)


def _number(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def metric_label(metric: str, split: str | None) -> str:
    """`"eval_accuracy"` on the validation split reads `"validation accuracy"`."""
    name = metric.removeprefix("eval_")
    return f"{split} {name}" if split else name


def round_table(
    history: list[dict], metric: str | None, best_round: int | None = None, split: str | None = None
) -> str:
    """
    A Markdown table with one row per round: pseudo-labels accepted, their accuracy (when the pool's labels are known)
    and the eval `metric` (on `split`). The round whose model was kept (`load_best_model_at_end`) is marked.
    """
    header = ["round", "pseudo-labels accepted", "pseudo-label accuracy"]
    if metric is not None:
        header.append(metric_label(metric, split))
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for record in history:
        name = (
            f"{record['round']} (kept)"
            if best_round is not None and record["round"] == best_round
            else str(record["round"])
        )
        cells = [name, str(record["num_pseudo_labels"]), _number(record.get("pseudo_label_accuracy"))]
        if metric is not None:
            cells.append(_number(record.get(metric), 4 if metric.endswith("loss") else 3))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_rounds(history: list[dict], metric: str | None, path: str, split: str | None = None) -> str:
    """
    Save a PNG of the rounds to `path`: pseudo-labels accepted (bars) and pseudo-label accuracy and the eval `metric`
    (lines).

    Raises:
        `ImportError`: with the command that installs matplotlib, when it is missing.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("The chart needs matplotlib: pip install 'hf-semisup[plot]'.") from error

    rounds = [record["round"] for record in history]
    # `Figure` directly, not pyplot: no global state and no display backend, safe in a script or a server.
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    accepted_axes, quality_axes = figure.subplots(1, 2)
    accepted_axes.bar(rounds, [record["num_pseudo_labels"] for record in history], color="tab:blue")
    accepted_axes.set(title="Pseudo-labels accepted", xlabel="round", xticks=rounds)

    accuracy = [
        (r["round"], r["pseudo_label_accuracy"]) for r in history if r.get("pseudo_label_accuracy") is not None
    ]
    if accuracy:
        quality_axes.plot(*zip(*accuracy), marker="o", label="pseudo-label accuracy")
    if metric is not None:
        points = [(r["round"], r[metric]) for r in history if r.get(metric) is not None]
        if points:
            quality_axes.plot(*zip(*points), marker="s", label=metric_label(metric, split))
    quality_axes.set(title="Quality per round", xlabel="round", xticks=rounds)
    values = [y for line in quality_axes.lines for y in line.get_ydata()]
    if values and all(0 <= y <= 1 for y in values):  # accuracies and F1: show them on their full scale
        quality_axes.set_ylim(0, 1.02)
    if quality_axes.lines:
        quality_axes.legend()
    figure.savefig(path, dpi=100)
    return path
