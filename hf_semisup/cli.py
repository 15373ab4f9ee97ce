"""The `hf-semisup` command line: `train` on any data and model, and `demo`, the offline quickstart."""

import argparse
import contextlib
import dataclasses
import difflib
import logging
import os
import shlex
import sys

import yaml
from transformers import (
    AutoConfig,
    AutoTokenizer,
    HfArgumentParser,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from .adapters import is_peft_model
from .arguments import DataArguments, ModelArguments, get_peft_config
from .checkpointing import find_latest_state
from .config import SemiSupervisedConfig
from .data import prepare_dataset
from .loading import load_splits, split_sources
from .modeling import check_local_path, file_location_kwargs, head_label_kwargs, load_classifier
from .outputs import CHART_NAME
from .report import plot_rounds, round_table, summary_metric
from .trainer import SemiSupervisedTrainer


logger = logging.getLogger(__name__)

PROG = "hf-semisup"
# What bad input raises while a run is set up. An error once training has started is a bug: it keeps its traceback.
INPUT_ERRORS = (ValueError, FileNotFoundError)
TRAIN_USAGE = "{prog} [--config FILE.yaml] [--option value ...]"
OPTIONS_NOTE = (
    "Every option can also be set in a YAML file given with --config (keys are the option names); the command line "
    "wins over the file."
)

COMMANDS = {
    "train": "Train on a Hub dataset or local files; prints a per-round summary and saves the model.",
    "demo": "Offline quickstart: `train` with a shipped config, movie-review sample and MiniLM, printing "
    "round 0 (no pseudo-labels yet) against self-training accuracy. Takes every `train` option.",
}


class ArgumentParser(HfArgumentParser):
    """An `HfArgumentParser` whose usage errors are one line: the usage of ~150 options would bury the message."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# ---- Parsing ----------------------------------------------------------------------------------------------------------
def make_train_parser(prog: str = f"{PROG} train", description: str = COMMANDS["train"]) -> ArgumentParser:
    """The parser of `hf-semisup train` (and `demo`): data, model and [`SemiSupervisedConfig`] options, `--config`."""
    parser = ArgumentParser(
        (DataArguments, ModelArguments, SemiSupervisedConfig),
        prog=prog,
        usage=TRAIN_USAGE.format(prog=prog),
        description=f"{description} {OPTIONS_NOTE}",
    )
    parser.add_argument(
        "--config", default=None, help="A YAML file of option values; options on the command line win over it."
    )
    _arrange_help(parser)
    return parser


def _arrange_help(parser: ArgumentParser):
    # `HfArgumentParser` lists a dataclass's fields in one group, so the semi-supervised options would come after some
    # 120 `TrainingArguments` ones. Headings, in order: --help/--config/--output_dir, data, model, semi-supervised, the
    # rest of `TrainingArguments`. Only the help changes: parsing reads the actions, not the groups.
    ours = {f.name for f in dataclasses.fields(SemiSupervisedConfig)} - {
        f.name for f in dataclasses.fields(TrainingArguments)
    }
    first = parser._optionals
    semi = parser.add_argument_group("semi-supervised options (SemiSupervisedConfig)")
    rest = parser.add_argument_group("training options (transformers.TrainingArguments)")
    for action in list(first._group_actions):
        if action.dest == "output_dir":
            # The field's default is `None`, which `TrainingArguments` turns into "trainer_output": say so in the help.
            action.default = "trainer_output"
        if action.dest in ("help", "config", "output_dir"):
            continue
        first._group_actions.remove(action)
        (semi if action.dest in ours else rest)._group_actions.append(action)
    others = [group for group in parser._action_groups if group not in (semi, rest)]
    parser._action_groups = [*others, semi, rest]


def read_config_file(path: str, parser: ArgumentParser) -> dict:
    """The option values of a YAML `--config` file, checked against the options `parser` knows."""
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"`--config` {path!r} does not exist.") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"`--config` {path!r} cannot be read: {error}.") from error
    except yaml.YAMLError as error:
        raise ValueError(f"`--config` {path!r} is not valid YAML: {' '.join(str(error).split())}") from error
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(
            f"`--config` {path!r} must map option names to values, but it holds a {type(values).__name__}."
        )
    values = {str(key).replace("-", "_"): value for key, value in values.items()}
    known = {action.dest for action in parser._actions} - {"help", "config"}
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"`--config` {path!r} has an unknown option {key!r}.{hint}")
    return values


def parse_train_args(
    parser: ArgumentParser, argv: list[str], defaults: dict | None = None
) -> tuple[DataArguments, ModelArguments, SemiSupervisedConfig]:
    """
    Parse `argv` over the `--config` file's values, themselves over `defaults`.

    The file's values become the parser's defaults (as in TRL's `TrlParser`), so argparse still converts and checks
    what the command line gives, and a string in the file (e.g. `1e-4`, which YAML reads as a string) is converted as
    if it had been typed. `--max_seq_length` is mapped onto the config's `max_length`.
    """
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--config", default=(defaults or {}).get("config"))
    config_path = peek.parse_known_args(argv)[0].config
    values = {key: value for key, value in (defaults or {}).items() if key != "config"}
    if config_path is not None:
        values.update(read_config_file(config_path, parser))
        values["config"] = config_path  # shown by --help
    parser.set_defaults(**values)
    # A mistyped option must be reported as such, before a dataclass complains about the value it did not get.
    unknown = parser.parse_known_args(argv)[1]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    data_args, model_args, config, _ = parser.parse_args_into_dataclasses(argv, look_for_args_file=False)
    if data_args.max_seq_length is not None:
        config.max_length = data_args.max_seq_length
    return data_args, model_args, config


# ---- Setting up a run (everything that can fail on bad input) -------------------------------------------------------
def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _from_pretrained(load, path: str, flag: str, **kwargs):
    check_local_path(path, f"`--{flag}`")
    try:
        return load(path, **kwargs)
    except (OSError, ValueError) as error:
        raise ValueError(f"`--{flag}` {path!r} could not be loaded: {_first_line(error)}") from error


def load_model(model_args: ModelArguments, labeled, config: SemiSupervisedConfig):
    """The tokenizer and classifier; a new head gets one output per class of `labeled`, named after the classes."""
    path = model_args.model_name_or_path
    hub = {
        "revision": model_args.model_revision,
        "trust_remote_code": model_args.trust_remote_code,
        "cache_dir": model_args.cache_dir,
    }
    hub.update(file_location_kwargs(config.model_init_kwargs))  # the config's own say wins, for all three files
    init_kwargs = {k: v for k, v in (config.model_init_kwargs or {}).items() if k not in hub}
    checkpoint = _from_pretrained(AutoConfig.from_pretrained, path, "model_name_or_path", **hub)
    tokenizer_flag = "tokenizer_name" if model_args.tokenizer_name else "model_name_or_path"
    tokenizer = _from_pretrained(
        AutoTokenizer.from_pretrained, model_args.tokenizer_name or path, tokenizer_flag, **hub
    )
    labels = head_label_kwargs(checkpoint, labeled, config.label_column)
    set_seed(config.seed)  # the new classification head must not depend on what ran before
    try:
        model = load_classifier(path, init_kwargs, **hub, **labels)
    except (OSError, ValueError) as error:
        if init_kwargs and isinstance(error.__cause__, (TypeError, AttributeError)):  # from `load_classifier`
            raise ValueError(
                f"`--model_init_kwargs` {config.model_init_kwargs!r} could not load {path!r}: "
                f"{_first_line(error.__cause__)}"
            ) from error
        if isinstance(error.__cause__, RuntimeError):  # a trained head of another size: its message says what to do
            raise
        raise ValueError(f"`--model_name_or_path` {path!r} could not be loaded: {_first_line(error)}") from error
    return tokenizer, model


def _name_the_sources(message: str, data_args: DataArguments, sources: dict, per_round: str | None) -> str:
    """
    The trainer's errors name its arguments (`eval_dataset`, ...): add the file or split each one came from, which is
    what a command-line user knows; `peft_config.target_modules` is `--lora_target_modules` here.
    """
    train, pool = sources["train"], sources.get("unlabeled")
    if data_args.num_labeled_per_class is not None:  # the labeled set and the pool are two parts of the train set
        rest = f"the rows of {train} not drawn by `--num_labeled_per_class`"
        train, pool = f"the rows `--num_labeled_per_class` drew from {train}", rest + (f" and {pool}" if pool else "")
    given = {"train_dataset": train, "eval_dataset": sources.get(per_round), "unlabeled_dataset": pool}
    for argument, source in given.items():
        if source is not None:
            message = message.replace(f"(`{argument}`)", f"(`{argument}`, from {source})")
    return message.replace("`peft_config.target_modules`", "`--lora_target_modules`")


@contextlib.contextmanager
def _warnings_renamed(rename):
    """While inside, the library's log records pass through `rename` (their message) on the way to every handler."""

    class Rename(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.name.split(".")[0] == __package__:
                record.msg, record.args = rename(record.getMessage()), None
            return True

    # Handlers, not loggers: a logger's filters do not apply to its children (`hf_semisup.data`, ...).
    handlers, rename_filter = list(logging.getLogger().handlers), Rename()
    for handler in handlers:
        handler.addFilter(rename_filter)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(rename_filter)


def build_trainer(data_args: DataArguments, model_args: ModelArguments, config: SemiSupervisedConfig):
    """
    Load and check the data and the model, and build the trainer: every input error surfaces here, before training.

    Returns:
        `(trainer, held_out, num_unlabeled)`: the [`SemiSupervisedTrainer`], the tokenized held-out splits by name
        (`"validation"`, `"test"`), and the size of the unlabeled pool.
    """
    with config.main_process_first(desc="loading the datasets"):
        splits = load_splits(data_args, config.text_column, config.label_column, cache_dir=model_args.cache_dir)
    pool = splits.get("unlabeled")
    if config.self_training_rounds > 0 and pool is None:
        raise ValueError(
            f"`--self_training_rounds`={config.self_training_rounds} needs unlabeled data: give `--unlabeled_file`, "
            "`--unlabeled_split_name` or `--num_labeled_per_class`."
        )
    # Rounds are compared on the validation set; without one, on the test set for the summary only.
    per_round = next((split for split in ("validation", "test") if split in splits), None)
    if config.load_best_model_at_end and per_round != "validation":
        raise ValueError(
            "`--load_best_model_at_end` picks a round on a validation set: give `--validation_file` or a dataset with "
            "a validation split (the test set never selects a model)."
        )

    tokenizer, model = load_model(model_args, splits["train"], config)
    sources = split_sources(data_args)
    try:
        with _warnings_renamed(lambda message: _name_the_sources(message, data_args, sources, per_round)):
            trainer = SemiSupervisedTrainer(
                model,
                config,
                train_dataset=splits["train"],
                eval_dataset=splits.get(per_round),
                processing_class=tokenizer,
                unlabeled_dataset=pool if config.self_training_rounds > 0 else None,
                peft_config=get_peft_config(model_args),
            )
    except ValueError as error:
        raise ValueError(_name_the_sources(str(error), data_args, sources, per_round)) from error
    held_out = {}
    with config.main_process_first(desc="tokenizing the held-out sets"):
        for split in ("validation", "test"):
            if split == per_round:
                held_out[split] = trainer.eval_dataset
            elif split in splits:
                held_out[split], _ = prepare_dataset(
                    splits[split],
                    tokenizer,
                    name=f"{split} set ({sources[split]})",
                    text_column=config.text_column,
                    label_column=config.label_column,
                    label2id=model.config.label2id,
                    num_labels=model.config.num_labels,
                    max_length=config.max_length,
                )
    trainer.model_card_facts.eval_split = per_round  # the card names the split its "Eval" metrics come from
    num_unlabeled = len(pool) if pool is not None and config.self_training_rounds > 0 else 0
    return trainer, held_out, num_unlabeled


def resume_target(config: SemiSupervisedConfig) -> bool | str | None:
    """
    What `--resume_from_checkpoint` asks `train` for: `True` for `true` / `latest` (the latest saved state under
    `output_dir`), a folder, or `None`. Checked here, so a run with nothing to resume stops before it loads anything.
    """
    value = config.resume_from_checkpoint
    if value is None or str(value).strip().lower() in ("", "false", "none"):
        return None
    if str(value).strip().lower() in ("true", "latest"):
        output_dir = config.output_dir
        checkpoint = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if find_latest_state(output_dir) is None and checkpoint is None:
            raise ValueError(
                f"`--resume_from_checkpoint` {value!r}: nothing to resume in `--output_dir` {output_dir!r} (no saved "
                "self-training state or checkpoint: was the first run's `save_strategy` 'no'?)."
            )
        return True
    if not os.path.isdir(value):
        raise ValueError(
            f"`--resume_from_checkpoint` {value!r} is not a folder: give a checkpoint folder, or `true` for the latest "
            "save under `--output_dir`."
        )
    return value


# ---- Training and reporting ---------------------------------------------------------------------------------------
def train_and_report(trainer: SemiSupervisedTrainer, held_out: dict, resume_from_checkpoint=None) -> dict:
    """
    Train, evaluate the final model on the held-out splits, save it with its label names, and print (main process) the
    per-round table and where the chart is.

    Returns:
        `dict`: `history` (the per-round records), `metrics` (the final model's `<split>_<metric>` values),
        `per_round` (the split the rounds were evaluated on) and `best_round`.
    """
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    history = trainer.self_training_history
    per_round = next((split for split, data in held_out.items() if data is trainer.eval_dataset), None)
    kept_last = trainer.best_round in (None, history[-1]["round"])
    metrics = {}
    for split, dataset in held_out.items():
        if split == per_round and kept_last:  # already evaluated at the end of the last round
            last = {key.removeprefix("eval_"): value for key, value in history[-1].items() if key.startswith("eval_")}
            metrics.update({f"{split}_{key}": value for key, value in last.items()})
        else:
            metrics.update(trainer.evaluate(dataset, metric_key_prefix=split))
    trainer.save_model()
    trainer.save_metrics("all", metrics)

    results = {"history": history, "metrics": metrics, "per_round": per_round, "best_round": trainer.best_round}
    if not trainer.is_world_process_zero():
        return results
    args = trainer.args
    metric = summary_metric(history, args.metric_for_best_model if args.load_best_model_at_end else None)
    print(f"\nSelf-training rounds:\n{round_table(history, metric, trainer.best_round, per_round)}")
    for split in held_out:
        scores = [
            f"{name} {metrics[f'{split}_{name}']:.4f}"
            for name in ("accuracy", "f1", "loss")
            if f"{split}_{name}" in metrics
        ]
        print(f"Final model on the {split} set: {', '.join(scores)}")
    try:
        print(f"Chart: {plot_rounds(history, metric, os.path.join(args.output_dir, CHART_NAME), per_round)}")
    except ImportError as error:
        print(f"No chart: {error}")
    if is_peft_model(trainer.model) and not args.save_merged_model:
        print(
            f"LoRA adapter, classification head and tokenizer saved in {args.output_dir}/ (the base model is not "
            "copied; its README.md shows how to load them with the label names)"
        )
    else:
        print(f"Model, tokenizer and label names saved in {args.output_dir}/")
    return results


def interrupted_message(trainer: SemiSupervisedTrainer, command: str, argv: list[str]) -> str:
    """One line for a run stopped by Ctrl-C: where it stopped, what was saved, and the command that resumes it."""
    run, args = trainer.run_state, trainer.args
    where = f"interrupted in round {run.round} ({run.phase}, step {trainer.state.global_step})"
    latest = find_latest_state(args.output_dir) if os.path.isdir(args.output_dir) else None
    checkpoint = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
    if latest is None and checkpoint is None:
        why = " (`--save_strategy` is 'no')" if args.save_strategy == "no" else ""
        return f"{where}; nothing was saved to resume from{why}: the same command starts over."
    if latest is not None:
        folder, saved = latest
        what = f"round {saved.round}, {saved.phase}" + (f", step {saved.step}" if saved.step else "")
        what = f"round {saved.round - 1} finished" if saved.phase == "labeling" and saved.step == 0 else what
    else:
        folder, what = checkpoint, "a Trainer checkpoint"
    resume, value_follows = [], False
    for arg in argv:  # the same command, without the `--resume_from_checkpoint` it may already have
        if not value_follows and not arg.startswith("--resume_from_checkpoint"):
            resume.append(arg)
        value_follows = arg == "--resume_from_checkpoint"
    command_line = shlex.join([PROG, command, *resume, "--resume_from_checkpoint", "true"])
    return f"{where}; the latest save is {what} ({folder}). Resume with: {command_line}"


# ---- Entry point ----------------------------------------------------------------------------------------------------
def _fail(command: str, error: Exception) -> int:
    # Under `accelerate launch` every process hits the same bad input: one of them says so.
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{PROG} {command}: error: {_first_line(error)}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run `hf-semisup` with `argv` (default: `sys.argv[1:]`); returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        parser = argparse.ArgumentParser(prog=PROG, description="Semi-supervised fine-tuning of text classifiers.")
        commands = parser.add_subparsers(dest="command", required=True)
        for name, help_ in COMMANDS.items():
            commands.add_parser(name, help=help_)
        parser.parse_args(argv)  # prints the help, or a usage error, and exits
        return 2
    command, argv = argv[0], argv[1:]
    try:
        defaults = {}
        if command == "demo":
            from .demo import demo_defaults

            defaults = demo_defaults(argv)
        parser = make_train_parser(f"{PROG} {command}", COMMANDS[command])
        data_args, model_args, config = parse_train_args(parser, argv, defaults)
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("hf_semisup").setLevel(logging.INFO if config.should_log else logging.WARNING)
        resume = resume_target(config)
        trainer, held_out, num_unlabeled = build_trainer(data_args, model_args, config)
    except INPUT_ERRORS as error:
        return _fail(command, error)

    try:
        results = train_and_report(trainer, held_out, resume)
    except KeyboardInterrupt:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"\n{PROG} {command}: {interrupted_message(trainer, command, argv)}", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
    if command == "demo" and trainer.is_world_process_zero():
        from .demo import print_comparison

        print_comparison(results, num_unlabeled, trainer.args.consistency_weight)
    return 0


if __name__ == "__main__":
    sys.exit(main())
