"""quiesce: quiet a Sidekiq fleet before a deploy, verify it, and watch it come back."""

__version__ = "0.1.0"
