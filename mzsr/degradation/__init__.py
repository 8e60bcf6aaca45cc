"""The degradation model: MATLAB-compatible bicubic resizing, blur kernels in the paper's and
KernelGAN's conventions, and degradation by correlation and subsampling."""
