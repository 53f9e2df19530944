"""The "Rotate agent logs" example: a host operation defined in Python and in YAML."""
