"""fedrun's default sweeper under the name Hydra accepts (plugins live in ``hydra_plugins``); the
sweeper itself is :class:`fedrun.cli.sweeper.FedrunSweeper`."""

from fedrun.cli import sweeper


class FedrunSweeper(sweeper.FedrunSweeper):
    """:class:`fedrun.cli.sweeper.FedrunSweeper`, registered with Hydra's plugin scanner."""


__all__ = ["FedrunSweeper"]
