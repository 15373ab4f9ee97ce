"""`push_to_hub` with the upload intercepted at the `huggingface_hub` boundary: which files would be sent."""

import json
from concurrent.futures import Future
from pathlib import Path

import pytest
from conftest import make_model, make_tokenizer, tiny_config, toy_dataset
from huggingface_hub import HfApi, ModelCard, RepoUrl
from huggingface_hub.utils import filter_repo_objects
from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS
from peft import LoraConfig

from hf_semisup import SemiSupervisedTrainer


REPO_ID = "someone/tiny-semisup"


class FakeHub:
    """Stands in for the Hub's HTTP API: records repos created and the files each upload would send."""

    def __init__(self):
        self.repos, self.uploads = [], []

    def create_repo(self, api, repo_id, **kwargs):
        self.repos.append(repo_id)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, api, *, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, **kwargs):
        # The same filtering `HfApi.upload_folder` applies, then a snapshot of the bytes it would send.
        folder = Path(folder_path)
        paths = sorted(p.relative_to(folder).as_posix() for p in folder.glob("**/*") if p.is_file())
        ignore = list(ignore_patterns or []) + DEFAULT_IGNORE_PATTERNS
        sent = filter_repo_objects(paths, allow_patterns=allow_patterns, ignore_patterns=ignore)
        self.uploads.append({"repo_id": repo_id, "files": {path: (folder / path).read_bytes() for path in sent}})
        if kwargs.get("run_as_future"):
            future = Future()
            future.set_result(None)
            return future
        return None

    def create_commit(self, api, *args, **kwargs):
        raise AssertionError("Only `upload_folder` should reach the Hub.")


@pytest.fixture
def fake_hub(monkeypatch):
    hub = FakeHub()
    for name in ("create_repo", "upload_folder", "create_commit"):
        method = getattr(hub, name)
        monkeypatch.setattr(HfApi, name, lambda api, *a, _m=method, **k: _m(api, *a, **k))
    return hub


def test_push_to_hub_sends_adapter_tokenizer_card_and_history(tmp_path, fake_hub):
    args = tiny_config(
        tmp_path / "out",
        push_to_hub=True,
        hub_model_id=REPO_ID,
        hub_token="hf_fake_token",
        self_training_rounds=1,
        confidence_threshold=0.5,
        num_train_epochs=1,
    )
    trainer = SemiSupervisedTrainer(
        make_model(),
        args,
        train_dataset=toy_dataset(16, seed=0),
        eval_dataset=toy_dataset(16, seed=2),
        processing_class=make_tokenizer(str(tmp_path)),
        unlabeled_dataset=toy_dataset(24, seed=1),
        peft_config=LoraConfig(task_type="SEQ_CLS", r=4),
    )
    assert fake_hub.repos == [REPO_ID]
    trainer.train()
    assert fake_hub.uploads == []  # save_strategy="no": nothing is pushed during training

    trainer.push_to_hub()
    (upload,) = fake_hub.uploads
    files = upload["files"]
    assert upload["repo_id"] == REPO_ID
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "self_training_history.json",
    } <= set(files)
    assert "model.safetensors" not in files
    # Working files stay home: round checkpoints and the pseudo-label files (with the tokenized pool's cache).
    assert (tmp_path / "out" / "pseudo_labels").is_dir()
    assert not [path for path in files if path.startswith(("round-", "pseudo_labels/"))], sorted(files)
    assert json.loads(files["self_training_history.json"]) == json.loads(json.dumps(trainer.self_training_history))
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "peft"
    assert {"hf-semisup", "semi-supervised", "text-classification", "peft", "lora"} <= set(card.data.tags)
    assert card.data.model_name == "tiny-semisup"
    assert f'AutoPeftModelForSequenceClassification.from_pretrained(\n    "{REPO_ID}"' in card.text
    assert "hf_fake_token" not in card.text

    # With `save_merged_model`, a user's `save_model()` pushes the merged weights and no adapter.
    trainer.args.save_merged_model = True
    trainer.save_model()
    assert len(fake_hub.uploads) == 2
    files = fake_hub.uploads[1]["files"]
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "self_training_history.json"} <= set(
        files
    )
    assert not set(files) & {"adapter_config.json", "adapter_model.safetensors"}
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "transformers"
    assert f'pipeline("text-classification", model="{REPO_ID}")' in card.text


def test_an_unreachable_hub_is_one_clear_error_before_training(tmp_path, monkeypatch):
    from huggingface_hub.errors import OfflineModeIsEnabled

    def offline(api, repo_id, **kwargs):
        raise OfflineModeIsEnabled("Cannot reach https://huggingface.co/api/repos/create: offline mode is enabled.")

    monkeypatch.setattr(HfApi, "create_repo", offline)
    args = tiny_config(tmp_path / "out", push_to_hub=True, hub_model_id=REPO_ID, self_training_rounds=0)
    with pytest.raises(ValueError) as error:
        SemiSupervisedTrainer(
            make_model(), args, train_dataset=toy_dataset(8), processing_class=make_tokenizer(str(tmp_path))
        )
    message = str(error.value)
    assert "`push_to_hub`=True" in message and repr(REPO_ID) in message
    assert "OfflineModeIsEnabled: Cannot reach" in message and "push_to_hub=False" in message
    assert isinstance(error.value.__cause__, OfflineModeIsEnabled)
