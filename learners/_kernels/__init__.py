"""numba kernels of the learners: free functions over arrays, each with a plain numpy reference."""
