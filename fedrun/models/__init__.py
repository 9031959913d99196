"""Models: the zoo, and a model as a function of one flat parameter vector.

Belongs here: ``torch.nn`` modules (``zoo.py``: logistic regression, MLP, CNN, CharLSTM;
``resnet.py``: ResNet-18 with GroupNorm), re-exported here as the config targets
(``fedrun.models.CNN``); ``params.py`` (:class:`FlatModel`, what engines and algorithms see);
``fit.py`` (the model-fits-data check: one sentence instead of a shape error).

May import: :mod:`fedrun.data`, :mod:`fedrun.config` and the ground.
"""

from fedrun.models.resnet import ResNet18GN
from fedrun.models.zoo import CNN, MLP, CharLSTM, LogisticRegression

__all__ = ["CNN", "MLP", "CharLSTM", "LogisticRegression", "ResNet18GN"]
