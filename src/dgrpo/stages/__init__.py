"""One module per pipeline stage: a plain function from input artifacts and the config to output artifacts.

Import the stage you need (`from dgrpo.stages.reward import run_reward`): each module pulls in only its own
dependencies, so a light stage does not pay for loading diffusers in its container.
"""
