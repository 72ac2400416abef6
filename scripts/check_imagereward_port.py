"""One-off proof that the `imagereward` reward equals the authors' ImageReward on the same weights.

Builds the ORIGINAL model (PyPI image-reward 1.5) with random weights, saves its state dict as ImageReward.pt
with the original key names, loads that file through `load_reward("imagereward", ...)`, and prints both scores
for a few image/prompt pairs and their max abs difference.

image-reward 1.5 does not import on transformers 5, so this needs a throwaway venv layered on the shared stack,
never the project's own environment:

    python -m venv /tmp/venv-irorig
    echo "import site; site.addsitedir('<project venv>/lib/python3.11/site-packages')" \
        > /tmp/venv-irorig/lib/python3.11/site-packages/zz_shared.pth
    /tmp/venv-irorig/bin/pip install --no-deps image_reward==1.5 timm==0.6.13 fairscale==0.4.13
    /tmp/venv-irorig/bin/python scripts/check_imagereward_port.py

The shims below only restore the transformers 4 helpers med.py imports or calls (same math: the padding mask
`(1 - m) * finfo.min`, no head mask), point its hard-coded bert-base-uncased tokenizer at a small local vocab
and stub the unrelated `clip`/`datasets` imports of the package's other modules. The ViT is the real ViT-L/16
(hard-coded by the package); the text encoder is a 2-layer BERT from a small med_config (hidden 768, which the
package's MLP(768) requires). Every LayerNorm and the MLP head get random non-default values so that a swapped
or dropped key would change the scores.
"""

import argparse
import json
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import BertTokenizer, modeling_utils, pytorch_utils

WORDS = ["a", "red", "blue", "green", "square", "cross", "circle", "photo", "of", "the", "cat", "dog", "on", "grass",
         "in", "snow", "painting", "portrait", "an", "astronaut", "riding", "horse", "city", "at", "night", "with"]
PROMPTS = ["a red square", "a photo of a cat on the grass", "an astronaut riding a horse in the city at night",
           "a dog in snow, oil painting portrait", " ".join(["a blue circle"] * 15)]  # the last one is truncated


def _shim_original(vocab_dir: Path):
    """Import the original ImageReward on transformers 5 (see the module docstring)."""
    for name in ("clip", "datasets"):
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
            sys.modules[name].load_dataset = None
    modeling_utils.apply_chunking_to_forward = pytorch_utils.apply_chunking_to_forward
    modeling_utils.prune_linear_layer = pytorch_utils.prune_linear_layer
    modeling_utils.find_pruneable_heads_and_indices = None  # only used by head pruning
    import ImageReward.models.BLIP.blip as blip
    import ImageReward.models.BLIP.med as med
    from ImageReward.ImageReward import ImageReward

    class LocalBertTokenizer(BertTokenizer):
        @classmethod
        def from_pretrained(cls, name, *args, **kwargs):
            return super().from_pretrained(vocab_dir)

        @property
        def additional_special_tokens_ids(self):  # gone in transformers 5; init_tokenizer reads it for [ENC]
            return self.convert_tokens_to_ids(["[ENC]"])

    blip.BertTokenizer = LocalBertTokenizer
    med.BertModel.all_tied_weights_keys = {}
    med.BertModel.invert_attention_mask = lambda self, m: (1.0 - m[:, None, None, :].to(self.dtype)) * torch.finfo(
        self.dtype).min
    med.BertModel.get_head_mask = lambda self, head_mask, n: [None] * n
    return ImageReward


def _randomise(model: torch.nn.Module, gen: torch.Generator):
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name.lower():  # LayerNorms: weights 1 +- 0.1, biases +- 0.05
                p.copy_(1 + 0.1 * noise if name.endswith("weight") else 0.05 * noise)
            elif name.startswith("mlp."):  # the head: unit-variance outputs instead of the ~1e-3 default
                fan_in = p.shape[-1] if p.ndim == 2 else 1
                p.copy_(noise / fan_in ** 0.5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from dgrpo.rewards import load_reward

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", "."] + WORDS
        (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n")
        BertTokenizer(str(tmp / "vocab.txt")).save_pretrained(tmp / "tok")
        med = {"architectures": ["BertModel"], "hidden_size": 768, "intermediate_size": 256,
               "num_hidden_layers": args.text_layers, "num_attention_heads": 12, "max_position_embeddings": 64,
               "vocab_size": len(vocab) + 2, "pad_token_id": 0, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
               "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
               "add_cross_attention": True, "encoder_width": 768, "model_type": "bert"}
        (tmp / "med_config.json").write_text(json.dumps(med))

        original_cls = _shim_original(tmp / "tok")
        torch.manual_seed(args.seed)
        original = original_cls(str(tmp / "med_config.json")).eval()
        _randomise(original, torch.Generator().manual_seed(args.seed))
        torch.save(original.state_dict(), tmp / "ImageReward.pt")
        print(f"original: {sum(p.numel() for p in original.parameters()) / 1e6:.1f}M parameters, "
              f"{len(original.state_dict())} checkpoint keys")

        rng = np.random.default_rng(args.seed)
        # Images of several sizes (one call each: a batch shares a size), then one same-size batch of all prompts
        # scored in batches of 2 (prompts of different lengths padded together, a partial last batch).
        shapes = [(300, 200), (224, 224), (96, 160), (512, 384), (180, 180)]
        images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
        batch = rng.integers(0, 256, (len(PROMPTS), 256, 320, 3), dtype=np.uint8)
        pairs = list(zip(PROMPTS, images, strict=True)) + list(zip(PROMPTS, batch, strict=True))
        with torch.no_grad():
            expected = np.array([original.score(p, Image.fromarray(im)) for p, im in pairs])
        # Negative control: the same file with one block's two LayerNorm weights swapped must not match.
        state = torch.load(tmp / "ImageReward.pt", weights_only=True)
        a, b = "blip.visual_encoder.blocks.5.norm1.weight", "blip.visual_encoder.blocks.5.norm2.weight"
        state[a], state[b] = state[b], state[a]
        torch.save(state, tmp / "swapped.pt")

        def port(checkpoint: str) -> np.ndarray:
            reward = load_reward("imagereward", {"checkpoint": str(tmp / checkpoint),
                                                 "med_config": str(tmp / "med_config.json"),
                                                 "tokenizer": str(tmp / "tok"), "device": "cpu", "batch_size": 2})
            return np.concatenate([reward(im[None], [p])["raw"] for p, im in zip(PROMPTS, images, strict=True)]
                                  + [reward(batch, PROMPTS)["raw"]])

        got, control = port("ImageReward.pt"), port("swapped.pt")
        for (p, im), e, g in zip(pairs, expected, got, strict=True):
            print(f"original {e: .7f}  port {g: .7f}  |diff| {abs(e - g):.2e}  {im.shape[:2]} {p[:40]!r}")
        print(f"score spread (std over pairs) {expected.std():.4f}")
        print(f"negative control (block 5 norm1/norm2 swapped): max abs difference "
              f"{np.abs(expected - control).max():.3e}")
        print(f"max abs difference: {np.abs(expected - got).max():.3e}")


if __name__ == "__main__":
    main()
