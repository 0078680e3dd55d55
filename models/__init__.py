"""Torch modules: backbones, temporal encoders (one file each, registered by name), losses."""
