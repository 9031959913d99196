"""The model built for the dataset, or one sentence when it cannot take the dataset's inputs.

A model that does not fit the data (``model=lstm`` on the synthetic vectors, ``model=cnn`` on
vectors, ``model=logreg`` on Shakespeare's character indices) fails in its constructor or its first
forward pass with a torch error; :func:`build_model` runs that forward pass on two training samples
before the run starts and turns any failure into a sentence naming the model, the inputs and what
fits them.
"""

from __future__ import annotations

from typing import Any

import torch

from fedrun.config.schema import build_object
from fedrun.errors import FedrunError

FITS = "vectors: logreg, mlp; images: cnn, mlp, logreg; character sequences: lstm"


def build_model(node: Any, option: str, data: Any) -> torch.nn.Module:
    """The model group's ``node`` (option ``option``, for the sentence) built for ``data``'s input
    shape and classes, checked on two samples."""

    x = data.x_train[:2]
    inputs = f"{tuple(data.input_shape)} {str(x.dtype).replace('torch.', '')}"

    def refuse(err: BaseException) -> FedrunError:
        reason = str(err).strip().split("\n", 1)[0].rstrip(".")
        return FedrunError(
            f"model={option} does not fit data={data.name}, whose inputs are {inputs} ({reason}): "
            f"use a model made for such inputs ({FITS})."
        )

    try:
        module = build_object(node, input_shape=data.input_shape, num_classes=data.num_classes, _convert_="all")
    except FedrunError:
        raise
    except Exception as err:  # noqa: BLE001 - the constructor refuses the shape
        raise refuse(err.__cause__ or err) from None
    if x.is_floating_point() and any(isinstance(m, torch.nn.Embedding) for m in module.modules()):
        raise refuse(ValueError("the model reads integer symbol indices"))
    try:
        with torch.no_grad():
            module.to(x.device)(x)
    except Exception as err:  # noqa: BLE001 - the forward pass refuses the inputs
        raise refuse(err) from None
    return module
