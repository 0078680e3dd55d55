"""The shared domain: configuration space, history store, datasets, settings, code versions."""
