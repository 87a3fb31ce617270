"""The integration tier's shared fixtures."""

from tests.support.fleets import start_fleet
from tests.support.fly import fake_fly
from tests.support.rejoin import fleets

__all__ = ["fake_fly", "fleets", "start_fleet"]
