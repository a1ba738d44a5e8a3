"""Benchmarks that ship with vllm-core (``vllm-core bench serve``)."""
