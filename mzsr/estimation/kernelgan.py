"""Per-image blur-kernel estimation for real photos: KernelGAN (Bell-Kligler, Shocher, Irani, NeurIPS
2019) in PyTorch, after the authors' release (sefibk/KernelGAN), written anew.

A deep linear generator G learns to downscale the LR image by 2 so that a patch discriminator D cannot
tell its 26x26 outputs from real 26x26 crops of the image: the image's patch statistics across scales
then fix the kernel. G is linear, so it equals one correlation with a 13x13 kernel K(W) (the release's
calc_curr_k) followed by keeping every second pixel; this module evaluates G that way, which is the
same function of the weights W (same values, same gradients; tests check it against the layered G) at
a fraction of the layered network's cost. G keeps the release's parametrisation (6 layers 7-5-3-1-1-1,
64 channels, no bias), which is what shapes the optimisation.

As in the release: crops drawn by gradient magnitude, the constraint losses and their weights, the
Learner's schedule (bicubic warm-up, then the sparsity and centre constraints, lr / 10 every 750
iterations), 3,000 iterations, post-processing (values below 0.75 x the 41st largest removed). Two
things differ, both on purpose: D's dequantisation noise is added to each crop only (the release adds
it in place to the stored image through a numpy view, so it accumulates where crops are drawn often;
its authors describe it as per-crop noise, sefibk/KernelGAN#83), and the result is put in MZSR's
kernel convention (centre of mass on the correlation origin, no shift) beside the release's own by
`mzsr.estimation.estimate`. The release's bicubic warm-up loss compares each channel of G's
output with the sum of the three channels' bicubic downscales (its kernel is expanded to 3x3 channels,
sefibk/KernelGAN#47); kept, since it decides when the warm-up ends.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mzsr import MZSRError, settings
from mzsr.degradation.kernels import kernelgan_center

# The config's estimate section (mzsr/config.schema.yaml) less seed (an argument of
# `estimate_kernel`): iterations and real_image, the ones the release's command line changes, and
# the release's other settings (configs.py, kernelGAN.py, learner.py).
KERNELGAN_DEFAULTS = settings.defaults("estimate", without=("seed",))
G_KERNEL_SIZE = sum(k - 1 for k in KERNELGAN_DEFAULTS["g_structure"]) + 1  # the receptive field of G: 13


# ------------------------------------------------------------------------------ the networks


class Generator(nn.Module):
    """The deep linear downscaler; `kernel()` is the one correlation kernel it equals."""

    def __init__(
        self, channels: int = KERNELGAN_DEFAULTS["g_channels"], structure=tuple(KERNELGAN_DEFAULTS["g_structure"])
    ):
        super().__init__()
        sizes = list(structure)
        ins = [1] + [channels] * (len(sizes) - 1)
        outs = [channels] * (len(sizes) - 1) + [1]
        self.layers = nn.ParameterList(
            [nn.Parameter(torch.empty(o, i, k, k)) for i, o, k in zip(ins, outs, sizes, strict=True)]
        )
        self.kernel_size = sum(k - 1 for k in sizes) + 1
        for w in self.layers:
            nn.init.xavier_normal_(w, 0.1)

    def kernel(self) -> torch.Tensor:
        """K(W): the response of one output pixel to the input, i.e. the adjoint (transposed
        convolutions, last layer first) applied to a delta. It equals the release's calc_curr_k (a delta
        pushed forward through the layers, flipped) at a twentieth of the cost."""
        k = torch.ones(1, 1, 1, 1, dtype=self.layers[0].dtype, device=self.layers[0].device)
        for w in reversed(self.layers):
            k = F.conv_transpose2d(k, w)
        return k[0, 0]

    def kernel_release(self) -> torch.Tensor:
        """The release's calc_curr_k, for the tests."""
        k = torch.ones(1, 1, 1, 1, dtype=self.layers[0].dtype, device=self.layers[0].device)
        for i, w in enumerate(self.layers):
            k = F.conv2d(k, w, padding=self.kernel_size - 1) if i == 0 else F.conv2d(k, w)
        return k[0, 0].flip([0, 1])

    def forward(self, x: torch.Tensor, kernel: torch.Tensor | None = None) -> torch.Tensor:
        """(1, C, H, W) in [-1, 1] -> (1, C, (H - 13) // 2 + 1, ...): every channel with the same K."""
        k = self.kernel() if kernel is None else kernel
        return F.conv2d(x.transpose(0, 1), k[None, None], stride=2).transpose(0, 1)

    def forward_layered(self, x: torch.Tensor) -> torch.Tensor:
        """The release's forward, layer by layer (the reference that `forward` is tested against)."""
        y = x.transpose(0, 1)
        for i, w in enumerate(self.layers):
            y = F.conv2d(y, w, stride=2 if i == len(self.layers) - 1 else 1)
        return y.transpose(0, 1)


class Discriminator(nn.Module):
    """The release's fully convolutional patch discriminator: a 7x7 spectral-norm convolution, five
    1x1 (spectral norm, batch norm, ReLU) blocks, a 1x1 convolution and a sigmoid."""

    def __init__(
        self,
        channels: int = KERNELGAN_DEFAULTS["d_channels"],
        layers: int = KERNELGAN_DEFAULTS["d_layers"],
        kernel: int = KERNELGAN_DEFAULTS["d_kernel"],
    ):
        super().__init__()
        sn = nn.utils.spectral_norm
        blocks = [sn(nn.Conv2d(3, channels, kernel))]
        for _ in range(layers - 2):
            blocks += [sn(nn.Conv2d(channels, channels, 1)), nn.BatchNorm2d(channels), nn.ReLU(True)]
        blocks += [sn(nn.Conv2d(channels, 1, 1)), nn.Sigmoid()]
        self.net = nn.Sequential(*blocks)
        self.shave = kernel - 1
        # The release's weights_init_D: conv biases 0, batch-norm scales N(1, 0.02). Its xavier init of
        # the conv weights writes into spectral norm's derived `weight` tensor, which the next forward
        # recomputes from `weight_orig`: the convolutions keep PyTorch's default init, as here.
        for m in self.net:
            if isinstance(m, nn.Conv2d):
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ------------------------------------------------------------------------------ the constraints

# The release's bicubic downscaling kernel for the warm-up loss (loss.DownScaleLoss): MATLAB's x0.5
# bicubic filter, 8x8, in the release's rounding.
_BICUBIC_1D = np.array([-0.01171875, -0.03515625, 0.11328125, 0.43359375])
BICUBIC_X2 = np.outer(np.r_[_BICUBIC_1D, _BICUBIC_1D[::-1]], np.r_[_BICUBIC_1D, _BICUBIC_1D[::-1]])


def penalty_mask(size: int, scale: float = 30.0) -> np.ndarray:
    """Weights of the boundary loss: 0 in the central (size // 2 + size % 2 + 2)-pixel square, growing
    towards the edges (1 - a wide Gaussian), times 30 (the release's create_penalty_mask)."""
    z = np.arange(-size // 2 + 1, size // 2 + 1)
    g = np.exp(-(z**2) / (2.0 * size**2))
    mask = 1.0 - np.outer(g, g) / np.outer(g, g).max()
    margin = (size - (size // 2 + size % 2)) // 2 - 1
    mask[margin:-margin, margin:-margin] = 0.0
    return scale * mask


class Constraints:
    """The losses on G's kernel and output, with the release's weights and Learner schedule."""

    def __init__(self, size: int, device):
        self.mask = torch.tensor(penalty_mask(size), dtype=torch.float32, device=device)
        self.indices = torch.arange(float(size), device=device)
        self.center = float(kernelgan_center((size,))[0])  # the release pulls towards its own centre
        self.bicubic = torch.tensor(BICUBIC_X2, dtype=torch.float32, device=device)
        self.weights = {"bicubic": 5.0, "sum2one": 0.5, "boundaries": 0.5, "centralized": 0.0, "sparse": 0.0}
        self.last_bicubic = float("inf")
        # Learner state
        self.bicubic_counter = 0
        self.similar_to_bicubic = False
        self.constraints_inserted = False

    def __call__(self, g_input: torch.Tensor, g_output: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        c = g_input.shape[1]
        # the release's expand(C, C, 8, 8): every output channel is the sum over input channels
        down = F.conv2d(g_input, self.bicubic.expand(c, c, 8, 8), stride=2, padding=3)
        dr, dc = down.shape[-2] - g_output.shape[-2], down.shape[-1] - g_output.shape[-1]
        down = down[..., dr // 2 : down.shape[-2] - dr // 2 - dr % 2, dc // 2 : down.shape[-1] - dc // 2 - dc % 2]
        bicubic = F.mse_loss(g_output, down)
        self.last_bicubic = float(bicubic.detach())
        total = k.sum()
        com = torch.stack([k.sum(1) @ self.indices, k.sum(0) @ self.indices]) / total
        w = self.weights
        loss = (
            bicubic * w["bicubic"] + (1.0 - total).abs() * w["sum2one"] + (k * self.mask).abs().mean() * w["boundaries"]
        )
        if w["centralized"]:
            loss = loss + ((com - self.center) ** 2).mean() * w["centralized"]
        if w["sparse"]:
            loss = loss + (k.abs() ** 0.2).mean() * w["sparse"]
        return loss

    def update(self, iteration: int, optimizers) -> None:
        """The release's Learner.update, called after each iteration."""
        if iteration == 0:
            return
        if iteration % 750 == 0:
            for opt in optimizers:
                for group in opt.param_groups:
                    group["lr"] /= 10.0
        if not self.similar_to_bicubic:
            if self.last_bicubic < 0.4:
                if self.bicubic_counter >= 2:
                    self.similar_to_bicubic = True
                else:
                    self.bicubic_counter += 1
            else:
                self.bicubic_counter = 0
        elif iteration % 200 == 0 and self.weights["bicubic"] > 5e-6:
            self.weights["bicubic"] = max(self.weights["bicubic"] / 100.0, 5e-6)
            if not self.constraints_inserted and self.weights["bicubic"] < 5e-3:
                self.weights["centralized"], self.weights["sparse"] = 1.0, 5.0
                self.constraints_inserted = True


# ------------------------------------------------------------------------------ crop sampling


def _zero_border(a: np.ndarray, edge: int) -> np.ndarray:
    out = np.zeros_like(a)
    out[edge:-edge, edge:-edge] = a[edge:-edge, edge:-edge]
    return out


def _clip_extreme(a: np.ndarray, percent: float = 0.97) -> np.ndarray:
    """Zero everything below the `percent` quantile; the rest kept within one small step above it."""
    s = np.sort(a.ravel())
    pivot = int(percent * len(s))
    lo = s[pivot]
    hi = s[pivot + 1] if s[pivot + 1] > lo else lo + 1e-5
    return np.clip(a, lo, hi) - lo


def _box(a: np.ndarray, size: int) -> np.ndarray:
    """scipy.signal.convolve2d(a, ones(size, size), 'same') / size**2."""
    import scipy.signal

    return scipy.signal.convolve2d(a, np.ones((size, size)), "same") / size**2


def gradient_map(img: np.ndarray, window: int = 5) -> np.ndarray:
    """Where the image has edges (the release's create_gradient_map), normalised to mean 1."""
    gray = img @ np.array([0.299, 0.587, 0.114]) if img.ndim == 3 else img
    gr, gc = np.gradient(gray)
    parts = [_clip_extreme(_zero_border(p, window)) for p in (np.abs(gr), np.abs(gc), np.hypot(gr, gc))]
    combined = sum(p / p.sum() if p.sum() > 0 else p for p in parts)
    m = _box(combined, window)
    return m / m.mean() if m.mean() > 0 else np.ones_like(m)


def crop_probabilities(loss_map: np.ndarray, crop: int) -> np.ndarray:
    """Probability of each pixel as a crop centre: the map's mean over a (crop // 2) box, zero within
    crop // 2 of the border (the release's create_probability_map); uniform on a flat image."""
    p = _zero_border(_box(loss_map, crop // 2), crop // 2).ravel()
    return p / p.sum() if p.sum() > 0 else np.full(p.size, 1.0 / p.size)


def _top_left(center: int, size: int, rows: int, cols: int) -> tuple[int, int]:
    row, col = divmod(int(center), cols)
    top = min(max(0, row - size // 2), rows - size)
    left = min(max(0, col - size // 2), cols - size)
    return top - top % 2, left - left % 2  # even, to stay on the downscaled grid


def significant_kernel(k: np.ndarray, n: int = KERNELGAN_DEFAULTS["n_filtering"]) -> np.ndarray:
    """The release's zeroize_negligible_val: subtract 0.75 x the (n+1)-th largest value, clip at 0,
    normalise (small values of the raw kernel are noise of the linear network)."""
    floor = 0.75 * np.sort(k.ravel())[-n - 1]
    out = np.clip(k - floor, 0.0, 100.0)
    return out / out.sum()


def _prepare(lr_image: np.ndarray, real_image: bool, sf: int = 2) -> np.ndarray:
    img = np.asarray(lr_image, dtype=np.float64)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if not real_image:  # the release shaves synthetic images' edges (boundary effects of degrading)
        img = img[10:-10, 10:-10]
    h, w = img.shape[0] - img.shape[0] % sf, img.shape[1] - img.shape[1] % sf
    return np.ascontiguousarray(img[:h, :w])


# ------------------------------------------------------------------------------ training


def train_kernel(lr_image: np.ndarray, cfg: dict, device, seed: int, progress: bool, source: str) -> np.ndarray:
    """KernelGAN on one LR image (HxWx3 float in [0, 1]; `cfg` the complete estimate section): G's x2
    kernel after training, post-processed as the release does (`significant_kernel`), in G's own frame
    (centre of mass where training left it; mzsr.estimation.estimate puts it in either convention)."""
    from tqdm import tqdm

    from mzsr.degradation.resize import imresize

    iterations, crop = int(cfg["iterations"]), int(cfg["crop"])
    if iterations < 1:
        raise MZSRError(f"kernel estimation: iterations must be >= 1, got {iterations}")
    img = _prepare(lr_image, bool(cfg["real_image"]))
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        G = Generator(int(cfg["g_channels"]), tuple(cfg["g_structure"])).to(device)
        g_out = (crop - G.kernel_size) // 2 + 1
        D = Discriminator(int(cfg["d_channels"]), int(cfg["d_layers"]), int(cfg["d_kernel"])).to(device)
        constraints = Constraints(G.kernel_size, device)
        opt_g = torch.optim.Adam(G.parameters(), lr=cfg["lr"], betas=(cfg["beta1"], 0.999))
        opt_d = torch.optim.Adam(D.parameters(), lr=cfg["lr"], betas=(cfg["beta1"], 0.999))

        rng = np.random.default_rng(seed)
        rows, cols = img.shape[:2]
        p_d = crop_probabilities(gradient_map(img), g_out)
        small = gradient_map(imresize(img, 0.5))
        p_g = crop_probabilities(np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)[:rows, :cols], crop)
        g_centres = rng.choice(p_g.size, size=iterations, p=p_g)
        d_centres = rng.choice(p_d.size, size=iterations, p=p_d)
        to_tensor = lambda a: torch.from_numpy(a.transpose(2, 0, 1)[None] * 2.0 - 1.0).float().to(device)  # noqa: E731

        for it in tqdm(range(iterations), desc="KernelGAN", unit="it", disable=not progress, leave=False):
            t, l_ = _top_left(g_centres[it], crop, rows, cols)
            g_in = to_tensor(img[t : t + crop, l_ : l_ + crop])
            t, l_ = _top_left(d_centres[it], g_out, rows, cols)
            d_crop = img[t : t + g_out, l_ : l_ + g_out] + rng.standard_normal((g_out, g_out, 3)) / 255.0
            d_in = to_tensor(d_crop)
            # G: fool D, under the constraints
            opt_g.zero_grad()
            k = G.kernel()
            g_pred = G(g_in, k)
            loss_g = (D(g_pred) - 1.0).abs().mean() + constraints(g_in, g_pred, k)
            loss_g.backward()
            opt_g.step()
            # D: real crops against G's output (dequantisation noise on both, as the release)
            opt_d.zero_grad()
            d_real = D(d_in)
            with torch.no_grad():
                fake = G(g_in)
            d_fake = D(fake + torch.randn_like(fake) / 255.0)
            loss_d = ((d_fake - 0.0).abs().mean() + (d_real - 1.0).abs().mean()) * 0.5
            loss_d.backward()
            opt_d.step()
            constraints.update(it, (opt_g, opt_d))
        with torch.no_grad():
            raw = G.kernel().double().cpu().numpy()
    if not np.all(np.isfinite(raw)) or raw.sum() == 0:
        raise MZSRError(f"{source}: kernel estimation diverged (non-finite or zero kernel)")
    return significant_kernel(raw, int(cfg["n_filtering"]))
