"""Redis: connection setup and error classification, and the Sidekiq store."""
