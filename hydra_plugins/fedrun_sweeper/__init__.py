"""fedrun's default sweeper under the name Hydra accepts (plugins live in ``hydra_plugins``); the
sweeper itself is :class:`fedrun.sweeper.FedrunSweeper`."""

from fedrun import sweeper


class FedrunSweeper(sweeper.FedrunSweeper):
    """:class:`fedrun.sweeper.FedrunSweeper`, registered with Hydra's plugin scanner."""


__all__ = ["FedrunSweeper"]
