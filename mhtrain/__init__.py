"""mhtrain: Optuna studies over multihead image classifiers trained with Lightning."""

class ConfigError(ValueError):
    """A configuration that cannot work, found before any epoch runs; the message is one line."""
