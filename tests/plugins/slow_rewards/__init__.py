"""A reward that scores like the toy reward for its first `after_calls` calls (counted in a marker file, across
loads and processes), then hangs (sleeps far longer than any test waits): a plug-in a stage time limit must stop."""

import time
from pathlib import Path

from dgrpo.toyworld.reward import toy_reward_model


def slow(marker: str, after_calls: int = 0, seconds: float = 3600.0):
    score = toy_reward_model()

    def hang(images, prompts):
        path = Path(marker)
        calls = int(path.read_text()) if path.exists() else 0
        path.write_text(str(calls + 1))
        if calls < after_calls:
            return score(images, prompts)
        time.sleep(seconds)
        raise AssertionError("the stage time limit did not stop the reward")

    return hang
