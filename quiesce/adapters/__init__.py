"""The only modules that talk to the outside: Redis, Fly, PostgreSQL, Prometheus."""
