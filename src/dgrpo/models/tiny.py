"""Tiny random-weight SD3 and FLUX pipelines built offline from configs, for tests and benchmarks.

Every component is the real diffusers / transformers class with a small config; the tokenizers are real
CLIP (byte-level BPE) and T5 (unigram) tokenizers over a character vocabulary, so prompt encoding runs the
pipelines' own code. `width` scales the model for benchmarks on an accelerator.
"""

import string

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

CLIP_MAX_LENGTH = 77


def clip_tokenizer() -> CLIPTokenizer:
    """CLIP's byte-level BPE with one token per byte (no merges): every string tokenizes."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    chars = sorted(ByteLevel.alphabet())
    vocab |= {c: i + 2 for i, c in enumerate(chars)}
    vocab |= {c + "</w>": i + 2 + len(chars) for i, c in enumerate(chars)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)


def t5_tokenizer() -> T5Tokenizer:
    """A T5 unigram tokenizer over single characters (ids 0, 1, 2 are pad, eos, unk as in T5)."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_letters + string.digits + string.punctuation]
    pieces += [("\u2581" + c, -2.5) for c in string.ascii_lowercase]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _clip_config(hidden: int, projection: int, tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=CLIP_MAX_LENGTH,
                          projection_dim=projection, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                          hidden_act="gelu")


def _t5(d_model: int, tokenizer: T5Tokenizer) -> T5EncoderModel:
    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model,
                                   num_layers=1, num_heads=2, relative_attention_num_buckets=8,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)).eval()


def _vae(latent_channels: int, scaling: float, shift: float) -> AutoencoderKL:
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=4, sample_size=32,
                         scaling_factor=scaling, shift_factor=shift, use_quant_conv=False,
                         use_post_quant_conv=False).eval()


def tiny_sd3_pipeline(seed: int = 0, width: int = 1, num_layers: int = 2,
                      sample_size: int = 16) -> StableDiffusion3Pipeline:
    """SD3 with 2 CLIP encoders, T5, a 2-layer MMDiT and a 2-level VAE: 32x32 images from 16x16x4 latents."""
    torch.manual_seed(seed)
    tok = clip_tokenizer()
    clip_hidden, heads, head_dim = 16 * width, 2 * width, 8 * width
    text_encoder = CLIPTextModelWithProjection(_clip_config(clip_hidden, clip_hidden, tok)).eval()
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(clip_hidden, clip_hidden, tok)).eval()
    t5_tok = t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=sample_size, patch_size=2, in_channels=4, out_channels=4, num_layers=num_layers,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=2 * clip_hidden,
        caption_projection_dim=heads * head_dim, pooled_projection_dim=2 * clip_hidden, pos_embed_max_size=64,
    ).eval()
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(4, 1.5305, 0.0609), text_encoder=text_encoder, tokenizer=tok, text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer(), text_encoder_3=_t5(2 * clip_hidden, t5_tok), tokenizer_3=t5_tok)


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True) -> FluxPipeline:
    """FLUX with CLIP + T5, one double and one single block, the dev scheduler (dynamic shift) and a 2-level VAE.

    Its default image size is the pipeline's 256 px; tests set `model.resolution` to 32.
    """
    torch.manual_seed(seed)
    tok, t5_tok = clip_tokenizer(), t5_tokenizer()
    text_encoder = CLIPTextModel(_clip_config(32, 32, tok)).eval()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6)).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(transformer=transformer, scheduler=scheduler, vae=_vae(4, 0.3611, 0.1159),
                        text_encoder=text_encoder, tokenizer=tok, text_encoder_2=_t5(32, t5_tok),
                        tokenizer_2=t5_tok)
