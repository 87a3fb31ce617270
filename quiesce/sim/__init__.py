"""Simulated Sidekiq fleets, an embedded Redis and the demo."""
