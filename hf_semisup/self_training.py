"""
The self-training side of [`SemiSupervisedTrainer`] each round: the teacher labels the pool, the selection keeps the
confident rows, and labeled + selected rows become the student's train set (its figures go into the round's record).
"""

import logging
import os
from collections import Counter

import datasets
import numpy as np

from .data import prepare_dataset, prepare_stream, pseudo_labeled_rows
from .guards import collapse_alarm
from .metrics import accuracy
from .pseudo_labeling import PSEUDO_LABELS_DIR, PseudoLabels, predict_pool, save_pseudo_labels
from .selection import select, selection_thresholds
from .soft_labels import one_hot_targets, with_soft_targets


logger = logging.getLogger(__name__)


class SelfTrainingMixin:
    """
    Pseudo-labeling, selection and the student's train set, mixed into [`SemiSupervisedTrainer`], which provides
    `args`, `model`, the prepared datasets, `class_prior`, `current_round` and `_prepare_kwargs`.
    """

    def _tokenize_for_prediction(self, dataset):
        name = "dataset to pseudo-label"
        if isinstance(dataset, datasets.IterableDataset):
            text_column, max_length = self.args.text_column, self.args.max_length
            return prepare_stream(
                dataset, self.processing_class, name=name, text_column=text_column, max_length=max_length
            )
        with self.args.main_process_first(desc="tokenizing the dataset to pseudo-label"):
            prepared, _ = prepare_dataset(
                dataset,
                name=name,
                labels="hide",
                add_length=True,
                cache_dir=os.path.join(self.args.output_dir, PSEUDO_LABELS_DIR, "cache"),
                **self._prepare_kwargs(),
            )
        return prepared

    def _predict(self, prepared, top_k: int | None = None) -> PseudoLabels:
        self._move_model_to_device(self.model, self.args.device)
        return predict_pool(
            self.model,
            prepared,
            self.data_collator,
            self.accelerator,
            self.args.per_device_eval_batch_size,
            top_k=self.args.pseudo_label_top_k if top_k is None else top_k,
            desc=f"Pseudo-labeling (round {self.current_round})",
            disable_tqdm=self.args.disable_tqdm,
        )

    def pseudo_label(
        self, dataset: datasets.Dataset | datasets.IterableDataset | None = None
    ) -> datasets.Dataset | datasets.IterableDataset:
        """
        The current model's prediction for every row of `dataset` (default: the unlabeled set), in order. Call it on
        every process: each labels its share and all return the same result.

        Returns:
            [`~datasets.Dataset`] (or [`~datasets.IterableDataset`] for one): `dataset` with more columns:
            `pseudo_label` (`int`, the argmax class), `confidence` (`float`, the top softmax probability) and, when
            `args.pseudo_label_top_k` is set, `top_k_labels` and `top_k_probabilities`.
        """
        if dataset is None:
            if self.unlabeled_dataset is None:
                raise ValueError(
                    "`pseudo_label()` needs a dataset: none was given and there is no `unlabeled_dataset`."
                )
            source, prepared = self.unlabeled_source, self.unlabeled_dataset
        else:
            source, prepared = dataset, self._tokenize_for_prediction(dataset)
        pseudo_labels = self._predict(prepared)
        columns = pseudo_labels.columns()
        columns["pseudo_label"] = columns.pop("label")
        if isinstance(source, datasets.IterableDataset):

            def add_columns(batch, indices):
                return {name: values.take(indices).to_pylist() for name, values in columns.items()}

            return source.map(add_columns, with_indices=True, batched=True)
        source = source.remove_columns([c for c in columns if c in source.column_names])
        for name, values in columns.items():
            source = source.add_column(name, values)
        return source

    def _label_and_select(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """
        The current model's `(labels, confidences)` for the pool, the selected rows, and with `soft_pseudo_labels`
        every row's full distribution (else `None`).
        """
        self.self_training_phase = "labeling"
        num_labels = self.model.config.num_labels
        # Soft targets need every class's probability: the pass keeps all of them, sorted, as its top-k.
        top_k = num_labels if self.args.soft_pseudo_labels else self.args.pseudo_label_top_k
        if self.current_round == 1 and self.args.first_teacher == "embeddings":
            pseudo_labels = self._predict_with_prototypes(top_k)
        else:
            pseudo_labels = self._predict(self.unlabeled_dataset, top_k=top_k)
        labels, confidences = pseudo_labels.labels, pseudo_labels.confidences
        self.self_training_phase = "selecting"
        selected = self._select(labels, confidences).selected
        if self.args.save_pseudo_labels and self.args.should_save:
            path = os.path.join(self.args.output_dir, PSEUDO_LABELS_DIR, f"round-{self.current_round}.parquet")
            save_pseudo_labels(path, pseudo_labels, selected)
        probabilities = pseudo_labels.probabilities(num_labels) if self.args.soft_pseudo_labels else None
        return labels, confidences, selected, probabilities

    def _select(self, labels: np.ndarray, confidences: np.ndarray):
        """This round's [`~hf_semisup.selection.Selection`] by `args.selection_strategy`."""
        return select(
            self.args.selection_strategy,
            labels,
            confidences,
            num_labels=self.model.config.num_labels,
            confidence_threshold=self.args.confidence_threshold,
            class_prior=self.class_prior if self.args.class_balance else None,
            max_pseudo_labels=self.args.max_pseudo_labels,
            round_=self.current_round,
            pseudo_label_fraction=self.args.pseudo_label_fraction,
        )

    def _pseudo_labeled_train_set(self, record: dict, pseudo_labels=None) -> datasets.Dataset:
        """
        Fill in `record` and return labeled + selected rows, from `pseudo_labels` (`(labels, confidences, selected,
        probabilities)`, e.g. restored from a checkpoint) or, by default, from labeling the pool with the current model
        now. With `soft_pseudo_labels`, the rows carry soft targets and weights.
        """
        pseudo_labels = pseudo_labels if pseudo_labels is not None else self._label_and_select()
        labels, confidences, selected, probabilities = pseudo_labels
        labels_dir = os.path.join(self.args.output_dir, PSEUDO_LABELS_DIR)
        id2label = self.model.config.id2label
        counts = Counter(labels[selected].tolist())
        record["num_pseudo_labels"] = len(selected)
        threshold, class_thresholds = selection_thresholds(
            self.args.selection_strategy,
            labels,
            confidences,
            selected,
            num_labels=len(id2label),
            confidence_threshold=self.args.confidence_threshold,
        )
        record["threshold"] = threshold
        if class_thresholds is not None:
            record["class_thresholds"] = {str(id2label[c]): float(t) for c, t in enumerate(class_thresholds)}
        record["pseudo_label_class_counts"] = {str(id2label[c]): counts.get(c, 0) for c in range(len(id2label))}
        record["num_confident"] = int((confidences >= self.args.confidence_threshold).sum())
        record["mean_confidence"] = float(confidences.mean())
        if self.unlabeled_gold_labels is not None:
            gold = self.unlabeled_gold_labels
            record["pseudo_label_accuracy"] = accuracy(labels[selected], gold[selected]) if len(selected) else None
            record["teacher_pool_accuracy"] = accuracy(labels, gold)
        self._check_collapse(record, [counts.get(c, 0) for c in range(len(id2label))])
        if len(selected) == 0:
            logger.warning(f"Round {record['round']}: no pseudo-label passed the selection; training on labeled data.")
            return self.labeled_dataset
        # The main process writes the selected rows to a cache file first, the others then map it.
        with self.args.main_process_first(desc="pseudo-labeled train set"):
            pseudo = pseudo_labeled_rows(
                self.unlabeled_dataset,
                labels,
                selected,
                stream_cache=os.path.join(labels_dir, "cache", f"round-{record['round']}-train.arrow"),
                write=self.accelerator.is_local_main_process,
            )
            if pseudo.features != self.labeled_dataset.features:
                pseudo = pseudo.cast(self.labeled_dataset.features)
        if not self.args.soft_pseudo_labels:
            return datasets.concatenate_datasets([self.labeled_dataset, pseudo])
        # `pseudo` holds the selected rows in selection order, or in pool order when read back from a stream.
        order = np.sort(selected) if isinstance(self.unlabeled_dataset, datasets.IterableDataset) else selected
        pseudo = with_soft_targets(pseudo, probabilities[order], confidences[order])
        labeled = one_hot_targets(self.labeled_dataset, len(id2label))
        return datasets.concatenate_datasets([labeled, pseudo])

    def _check_collapse(self, record: dict, class_counts: list[int]):
        alarm = collapse_alarm(class_counts, self.class_prior, self.args.collapse_alarm_margin)
        record["collapse_alarm"] = alarm is not None
        if alarm is not None:
            class_id, share = alarm
            name = str(self.model.config.id2label[class_id])
            record["collapse_alarm_class"], record["collapse_alarm_share"] = name, share
            logger.warning(
                f"Round {record['round']}: pseudo-label collapse alarm: {share:.0%} of the {sum(class_counts)} accepted "
                f"pseudo-labels are {name!r}, whose labeled share is {self.class_prior[class_id]:.0%} (more than "
                f"`collapse_alarm_margin`={self.args.collapse_alarm_margin} above it)."
                + (
                    ""
                    if self.args.class_balance
                    else " Consider `class_balance=True`, which keeps the labeled shares."
                )
            )
