"""Semi-supervised fine-tuning of Hugging Face text classifiers: self-training and consistency regularization."""

from .config import SemiSupervisedConfig
from .guards import NonFiniteError
from .trainer import SemiSupervisedTrainer


__version__ = "0.1.0.dev0"

__all__ = ["NonFiniteError", "SemiSupervisedConfig", "SemiSupervisedTrainer", "__version__"]
