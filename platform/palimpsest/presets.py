"""Model presets: architectures built from a config with random init (no hub needed).

Pure data, so the spec can validate preset names without importing torch.
"""

# Sizes chosen so the fact-world tests and the quickstart fit a 2-core CPU:
# tiny-llama (~0.6M parameters with a 1,024-token BPE) memorises ~300 short facts in
# a few hundred steps (measured: docs/design.md, "Fact-world budget").
MODEL_PRESETS: dict[str, dict] = {
    "tiny-llama": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
    ),
    "small-llama": dict(
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=512,
    ),
    # ~350M parameters: the GPU throughput check (docs/design.md, "GPU checks").
    "llama-350m": dict(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=16,
        max_position_embeddings=2048,
    ),
}
