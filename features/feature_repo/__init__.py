"""The Feast feature repository: feature_store.yaml and the declarative definitions."""
