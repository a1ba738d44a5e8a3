"""Attention backends of the CUDA plugin: "triton" (ours, portable), "flash_attn" and
"flashinfer" (thin adapters over those packages, refused with a reason when not installed)."""
