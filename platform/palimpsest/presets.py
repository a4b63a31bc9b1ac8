"""Model presets: architectures built from a config with random init (no hub needed).

Pure data, so the spec can validate preset names without importing torch.
"""


def _llama(hidden_size: int, intermediate_size: int, num_hidden_layers: int, num_attention_heads: int,
           max_position_embeddings: int) -> dict:
    """A Llama config's sizes, with as many key/value heads as attention heads (no grouped-query attention)."""
    return dict(hidden_size=hidden_size, intermediate_size=intermediate_size, num_hidden_layers=num_hidden_layers,
                num_attention_heads=num_attention_heads, num_key_value_heads=num_attention_heads,
                max_position_embeddings=max_position_embeddings)


# Sizes chosen so the fact-world tests and the quickstart fit a 2-core CPU:
# tiny-llama (~0.6M parameters with a 1,024-token BPE) memorises ~300 short facts in
# a few hundred steps (measured: docs/design.md, "Fact-world budget").
# llama-350m (~350M parameters) is the GPU throughput check (docs/design.md, "GPU checks").
# _llama(hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, max_position_embeddings):
MODEL_PRESETS: dict[str, dict] = {
    "tiny-llama": _llama(128, 256, 2, 4, 256),
    "small-llama": _llama(256, 688, 4, 8, 512),
    "llama-350m": _llama(1024, 2816, 24, 16, 2048),
}
