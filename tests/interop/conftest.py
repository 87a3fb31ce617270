"""The interop tier's fixtures: a real Sidekiq on the test Redis."""

from tests.support.sidekiq import start_sidekiq

__all__ = ["start_sidekiq"]
