"""The read path: federated alert search over Postgres and the search store (docs/search.md)."""
