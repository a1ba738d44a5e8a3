"""Quantization methods: a name registry (``registry``); methods live in their own modules."""
