"""The paper's evaluation protocol (Y-channel PSNR and SSIM) and the tables built from its scores."""
