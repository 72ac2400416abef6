"""A team's plug-in package whose own code fails as it is imported."""

SETTINGS: dict[str, str] = {}
DEFAULT = SETTINGS["default"]


def reward():  # pragma: no cover - never reached
    raise AssertionError
