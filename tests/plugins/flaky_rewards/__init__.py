"""A reward that fails its first `fail_times` calls across processes (counted in a marker file), then scores like
the toy reward: a segment that fails and is retried, for the chain's tests."""

from pathlib import Path

from dgrpo.toyworld.reward import toy_reward_model


def flaky(marker: str, fail_times: int = 1):
    score = toy_reward_model()

    def flaky_score(images, prompts):
        path = Path(marker)
        calls = int(path.read_text()) if path.exists() else 0
        path.write_text(str(calls + 1))
        if calls < fail_times:
            raise RuntimeError(f"flaky reward: injected failure {calls + 1} of {fail_times}")
        return score(images, prompts)

    return flaky_score
