"""A team's own reward stage, independent of dgrpo: a KFP component that reads the rollouts Parquet file and
writes a rewards Parquet file valid against the `rewards` contract (`dgrpo contract show reward`).

The reward prefers brighter images: the mean pixel value in [0, 1]. Regenerate the component YAML with
`python examples/custom_reward/reward_component.py` (it writes component.yaml beside this file).
"""

from pathlib import Path

from kfp import compiler, dsl
from kfp.dsl import Dataset, Input, Output


@dsl.component(base_image="python:3.11-slim", packages_to_install=["pyarrow>=16", "numpy>=1.26", "pillow>=10"])
def brightness_reward(rollouts: Input[Dataset], rewards: Output[Dataset], round_index: int = 0):
    """Score each rollout image by its mean brightness; one row per input sample, same ids."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    table = pq.read_table(rollouts.path, columns=["sample_id", "group_id", "prompt", "image_png"])
    pixels = [np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64) / 255.0
              for png in table.column("image_png").to_pylist()]
    brightness = [float(p.mean()) for p in pixels]
    components_type = pa.map_(pa.string(), pa.float64())
    schema = pa.schema([
        pa.field("sample_id", pa.string(), nullable=False), pa.field("group_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False), pa.field("reward", pa.float64(), nullable=False),
        pa.field("components", components_type, nullable=False),
    ], metadata={"dgrpo.contract": "rewards", "dgrpo.contract_version": "1"})
    out = pa.table({
        "sample_id": table.column("sample_id"), "group_id": table.column("group_id"), "prompt": table.column("prompt"),
        "reward": pa.array(brightness, pa.float64()),
        "components": pa.array([[("brightness", b)] for b in brightness], components_type),
    }, schema=schema)
    pq.write_table(out, rewards.path)
    print(f"round {round_index}: {out.num_rows} images, mean brightness {np.mean(brightness):.4f}")


if __name__ == "__main__":
    compiler.Compiler().compile(brightness_reward, str(Path(__file__).with_name("component.yaml")))
