"""Portable Triton kernels shared by the GPU platform plugins (CUDA, ROCm, XPU).

Not a platform plugin itself: it registers nothing. A plugin names the attention backend
(``vllm_core_triton.attention.TritonAttentionBackend``) in its own hooks and hands the model
``vllm_core_triton.ops.TritonLayerOps``. Importing this package imports neither torch nor
Triton; the kernels compile on first use for the device they run on.
"""
