"""A ``SidekiqStore`` on a test server, built the way the CLI builds one."""

from __future__ import annotations

from quiesce.adapters.redis.store import SidekiqStore
from quiesce.settings import Settings, build_settings


def settings_for(url: str, namespace: str = "") -> Settings:
    return build_settings(urls=[url], environ={}, namespace=namespace)


def store_for(url: str, namespace: str = "") -> SidekiqStore:
    return SidekiqStore(settings_for(url, namespace).redis[0], settings_for(url, namespace))
