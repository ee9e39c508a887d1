"""The model sizes bench/scale.py measures: their published shapes, a random model of each, and
what one token multiplies (its matrices, the live adapter's).

Two changes make a random model decode like a trained one: the final norm's weight is
scaled so the next-token distribution is peaked (a near-uniform one would make top-p
sampling sort the whole vocabulary every step), and the stop tokens' embedding rows are
zeroed so every candidate runs to --tokens (each step then has all n rows).
"""

from __future__ import annotations

from pathlib import Path

# The published dimensions (each model's config.json); vocabularies are the real sizes (the
# LM head is a large share of the small models' cost), the tokenizer is SmolLM2's.
SIZES = {
    "tiny": ("llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=49152, tie_word_embeddings=True)),
    "135m": ("llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                           num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0)),
    "360m": ("llama", dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                           num_key_value_heads=5, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0)),
    "0.5b": ("qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                           num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0)),
    "1.5b": ("qwen2", dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                           num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0)),
    "1.7b": ("llama", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                           num_key_value_heads=32, vocab_size=49152, tie_word_embeddings=True, rope_theta=130000.0)),
    "8b": ("llama", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0)),
}
NAMES = {"tiny": "tiny (test model)", "135m": "SmolLM2-135M", "360m": "SmolLM2-360M", "0.5b": "Qwen2.5-0.5B",
         "1.5b": "Qwen2.5-1.5B", "1.7b": "SmolLM2-1.7B", "8b": "Llama-3.1-8B"}
LOGIT_SHARPNESS = 40.0  # final-norm weight: near-uniform random logits become a peaked distribution


def config_of(size: str, **extra):
    from transformers import AutoConfig

    arch, dims = SIZES[size]
    return AutoConfig.for_model(arch, **dims, **extra)


def build(size: str, folder: Path, dtype, tokenizer, device: str = "cpu") -> Path:
    """Save a random model of `size` (and the tokenizer) to `folder`, initialised on `device` (a GPU: in seconds)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = config_of(size, max_position_embeddings=8192, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, rms_norm_eps=1e-6)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise in the target dtype: an 8B model in float32 would need 32 GB
    try:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        model.model.norm.weight.fill_(LOGIT_SHARPNESS)
        stops = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
        for embedding in {model.get_input_embeddings(), model.get_output_embeddings()}:
            embedding.weight[sorted(stops)] = 0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # the engine process loads it next
    return folder


def kv_dim(config) -> int:
    """Width of one token's keys (or values) in one layer."""
    return config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)


def matmul_parameters(config) -> tuple[int, int]:
    """(parameters of the decoder's matrices, of the LM head): what one token multiplies."""
    h, i, kv = config.hidden_size, config.intermediate_size, kv_dim(config)
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i  # q, o; k, v; gate, up, down
    return config.num_hidden_layers * per_layer, config.vocab_size * h


def lora_parameters(config, r: int = 16) -> int:
    """Parameters of the live adapter (r on every linear layer but the head): A is r x in, B is out x r."""
    h, i, kv = config.hidden_size, config.intermediate_size, kv_dim(config)
    per_layer = sum(r * (a + b) for a, b in ((h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)))
    return config.num_hidden_layers * per_layer
