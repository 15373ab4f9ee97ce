import dataclasses

import pytest
from transformers import HfArgumentParser

from hf_semisup import SemiSupervisedConfig


def test_every_new_field_has_help():
    from transformers import TrainingArguments

    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    new = [f for f in dataclasses.fields(SemiSupervisedConfig) if f.name not in base]
    assert {"self_training_rounds", "confidence_threshold", "class_balance", "max_pseudo_labels"} <= {
        f.name for f in new
    }
    for f in new:
        assert f.metadata.get("help"), f"field {f.name} has no help"


def test_hf_argument_parser_reads_the_fields(tmp_path):
    parser = HfArgumentParser(SemiSupervisedConfig)
    (config,) = parser.parse_args_into_dataclasses(
        [
            "--output_dir", str(tmp_path),
            "--self_training_rounds", "3",
            "--confidence_threshold", "0.8",
            "--class_balance", "false",
            "--max_pseudo_labels", "100",
            "--student_init", "continue",
            "--student_epochs", "2.5",
            "--text_column", "sentence",
            "--model_init_kwargs", '{"revision": "v1.0", "dtype": "bfloat16"}',
        ]
    )  # fmt: skip
    assert config.self_training_rounds == 3
    assert config.confidence_threshold == 0.8
    assert config.class_balance is False
    assert config.max_pseudo_labels == 100
    assert config.student_init == "continue"
    assert config.student_epochs == 2.5
    assert config.text_column == "sentence"
    assert config.model_init_kwargs == {"revision": "v1.0", "dtype": "bfloat16"}
    assert isinstance(config.student_epochs, float)


@pytest.mark.parametrize("value", ["none", "None", "null"])
def test_student_epochs_none_from_the_command_line(tmp_path, value):
    parser = HfArgumentParser(SemiSupervisedConfig)
    (config,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--student_epochs", value])
    assert config.student_epochs is None
    assert config.round_epochs(1) == config.num_train_epochs


@pytest.mark.parametrize(
    "field, value",
    [
        ("confidence_threshold", 0.0),
        ("confidence_threshold", 1.0),
        ("confidence_threshold", 1.5),
        ("confidence_threshold", -0.1),
        ("self_training_rounds", -1),
        ("max_pseudo_labels", 0),
        ("student_init", "warm"),
        ("max_length", 1),
        ("min_steps_per_round", -5),
        ("min_steps_per_round", 2.5),
        ("student_epochs", 0),
        ("student_epochs", -1.0),
        ("student_epochs", "one"),
        ("student_epochs", float("nan")),
        ("model_init_kwargs", "revision=v1.0"),
        ("model_init_kwargs", '{"revision": v1.0}'),
        ("model_init_kwargs", ["revision"]),
        ("model_init_kwargs", {"num_labels": 3}),
        ("model_init_kwargs", {"dtype": "float32", "id2label": {0: "a"}}),
    ],
)
def test_bad_values_name_the_field_and_value(tmp_path, field, value):
    with pytest.raises(ValueError) as error:
        SemiSupervisedConfig(output_dir=str(tmp_path), **{field: value})
    assert field in str(error.value)
    assert repr(value) in str(error.value)


def test_round_length_floor(tmp_path):
    config = SemiSupervisedConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, min_steps_per_round=100)
    # 16 labels: 3 epochs would be 6 steps, so the round takes the floor.
    assert config.round_max_steps(16) == 100
    # 1,016 rows: 3 epochs are 381 steps, more than the floor: epochs as usual.
    assert config.round_max_steps(1016) == -1
    # The floor counts optimizer steps: with 2 processes and accumulation 4, 3 epochs of 1,016 rows are 48 steps.
    config.gradient_accumulation_steps = 4
    assert config.round_max_steps(1016, world_size=2) == 100
    assert config.round_max_steps(16 * 400, world_size=2) == -1
    # An explicit max_steps wins, and 0 turns the floor off.
    assert SemiSupervisedConfig(output_dir=str(tmp_path), max_steps=7).round_max_steps(16) == 7
    assert SemiSupervisedConfig(output_dir=str(tmp_path), min_steps_per_round=0).round_max_steps(16) == -1


def test_students_train_student_epochs_and_round_0_num_train_epochs(tmp_path):
    config = SemiSupervisedConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, min_steps_per_round=100)
    assert (config.num_train_epochs, config.student_epochs) == (3.0, 1.0)
    assert config.round_epochs(0) == 3.0
    assert config.round_epochs(1) == config.round_epochs(2) == 1.0
    # 1,016 rows: 3 epochs (round 0) are 381 steps, above the floor; 1 epoch (a student) is 127 steps, still above it.
    assert config.round_max_steps(1016, round_=0) == config.round_max_steps(1016, round_=1) == -1
    # 416 rows: 3 epochs are 156 steps, 1 epoch is 52, so the student takes the floor.
    assert config.round_max_steps(416, round_=0) == -1
    assert config.round_max_steps(416, round_=2) == 100
    config.student_epochs = None
    assert config.round_epochs(2) == 3.0
    assert config.round_max_steps(416, round_=2) == -1


def test_no_pinned_memory_without_an_accelerator(tmp_path, tokenizer, monkeypatch):
    # Torch warns "'pin_memory' argument is set as true but no accelerator is found" at every DataLoader of a CPU run.
    import warnings

    from conftest import make_model, toy_dataset

    from hf_semisup import SemiSupervisedTrainer

    monkeypatch.setattr("hf_semisup.config.has_accelerator", lambda: False)
    config = SemiSupervisedConfig(output_dir=str(tmp_path), report_to="none", max_steps=2, self_training_rounds=0)
    assert config.dataloader_pin_memory is False
    trainer = SemiSupervisedTrainer(make_model(), config, train_dataset=toy_dataset(8), processing_class=tokenizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert not [w for w in caught if "pin_memory" in str(w.message)]

    monkeypatch.setattr("hf_semisup.config.has_accelerator", lambda: True)
    assert SemiSupervisedConfig(output_dir=str(tmp_path), report_to="none").dataloader_pin_memory is True
    on_cpu = SemiSupervisedConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    assert on_cpu.dataloader_pin_memory is False
