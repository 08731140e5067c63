"""C++/CUDA kernels for pruning hot paths, with PyTorch fallbacks."""
