"""MZSRNet's 3x3 convolutions as fast as a CPU runs them: channels-last activations, a written-out
second-order backward, and (opt-in) bfloat16.

On a CPU PyTorch runs these convolutions with oneDNN. On NCHW tensors it reorders every activation to
a blocked layout and back around each call; on channels-last (NHWC) tensors it does not, and its
forward and input-gradient kernels run at the core's GEMM rate. Second-order MAML also differentiates
each convolution's backward, and PyTorch's generic double backward computes one of its terms as a
convolution whose filter is a whole activation, outside oneDNN's 3x3 kernels; `ConvGrad` writes that
backward out as the three standard kernels (forward, input gradient, weight gradient). Both change
only the order of floating-point sums: float64 gradients agree with PyTorch's to rounding
(tests/test_conv.py checks them against plain `F.conv2d`).

`grad_dtype=torch.bfloat16` (config `grad_precision: bfloat16`, opt-in, on CPUs with native bfloat16:
AMX or AVX512-BF16) runs in bfloat16 with float32 weights and float32 accumulation inside oneDNN:
- the network's hidden layers (`network`: adaptation and its inference): forward, backward and the
  activations between them, bfloat16 from layer to layer (per layer, autograd would cast each gradient
  to float32 and back, a quarter of the time); the first and last layers (3 channels) and the residual
  stay float32;
- second-order MAML (`conv3x3` per layer, mzsr.training.maml): the gradients' convolutions, first and
  second order. Its forward stays float32: in bfloat16 it moved tests/test_conv.py's meta-gradient
  8% from float64's (1.3% with a float32 forward) and saved a tenth of a meta-iteration's time.
On such a CPU a bfloat16 convolution runs at twice the float32 rate (AVX512-BF16) or more (AMX). It
moves adapted outputs by a few grey levels and PSNR by hundredths of a dB (docs/results.md). The
precision is an argument of each call, never a module-wide setting.

GPUs keep NCHW and PyTorch's own backward (cuDNN, which the CUDA-graph meta-step captures).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mzsr import MZSRError

GRADIENT_PRECISIONS = ("float32", "bfloat16")


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX or AVX512-BF16): elsewhere oneDNN emulates
    it, slower than float32."""
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def grad_dtype(precision: str, device) -> torch.dtype | None:
    """The dtype of the gradients' convolutions for a `grad_precision` setting on `device`: None (the
    tensors' own, float32) or torch.bfloat16; a clear error for a precision that does not exist or
    that this device does not run fast."""
    if precision not in GRADIENT_PRECISIONS:
        raise MZSRError(f"unknown gradient precision {precision!r}; use one of {', '.join(GRADIENT_PRECISIONS)}")
    if precision == "float32":
        return None
    if torch.device(device).type != "cpu" or not native_bfloat16():
        raise MZSRError(
            "gradient precision bfloat16 needs a CPU with AMX or AVX512-BF16 (this one would emulate it, "
            "slower than float32; GPUs use TF32); use float32"
        )
    return torch.bfloat16


def fast_path(x: torch.Tensor) -> bool:
    """Whether `x` takes the CPU path (channels-last, written-out double backward): on a CPU."""
    return x.device.type == "cpu"


def activation_layout(x: torch.Tensor) -> torch.Tensor:
    """`x` in the memory format its convolutions run fastest in: channels-last on the CPU path."""
    if x.dim() == 4 and fast_path(x):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def conv3x3(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, grad_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, padding=1)`, with `ConvGrad` as its backward on the CPU path, its
    float32 gradients computed in `grad_dtype` (None: float32)."""
    if fast_path(x) and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        dtype = grad_dtype if grad_dtype is not None and x.dtype == torch.float32 else x.dtype
        return _Conv3x3.apply(x, weight, bias, dtype)
    return F.conv2d(x, weight, bias, padding=1)


def network(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    biases: list[torch.Tensor | None],
    grad_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The plain network: conv3x3 layers with ReLU between them (not after the last); on the CPU path
    with `grad_dtype` bfloat16, its hidden layers in bfloat16 (forward, first-order backward, inference)."""
    if fast_path(x) and grad_dtype is not None and x.dtype == torch.float32:
        if torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)):
            return _FirstOrderNetwork.apply(x, grad_dtype, len(weights), *weights, *biases)
        with torch.no_grad():  # inference
            return _forward_in(grad_dtype, x, weights, biases)
    relu = torch.relu_ if fast_path(x) else torch.relu  # in place: a fresh activation costs its page faults
    h = x
    for i, (weight, bias) in enumerate(zip(weights, biases)):
        h = conv3x3(h, weight, bias, grad_dtype)
        if i < len(weights) - 1:
            h = relu(h)
    return h


class _FirstOrderNetwork(torch.autograd.Function):
    """`network` with its hidden layers in `dtype` (`_forward_in`), forward and back: activations and
    their gradients stay in `dtype` between them (per layer, autograd would cast every gradient to
    float32 and back). It cannot be differentiated twice (second-order MAML takes the per-layer path:
    mzsr.training.maml)."""

    @staticmethod
    def forward(ctx, x, dtype, layers, *params):
        weights, biases, inputs = params[:layers], params[layers:], []
        out = _forward_in(dtype, x, weights, biases, inputs)
        ctx.save_for_backward(*inputs, *weights)
        ctx.layers, ctx.has_bias = layers, [b is not None for b in biases]
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        layers = ctx.layers
        inputs, weights = ctx.saved_tensors[:layers], ctx.saved_tensors[layers:]
        d_weights, d_biases = [None] * layers, [None] * layers
        for i in reversed(range(layers)):
            dtype = inputs[i].dtype
            need_x = i > 0 or ctx.needs_input_grad[0]
            d_x, d_w, d_b = torch.ops.aten.convolution_backward(
                grad.to(dtype), inputs[i], weights[i].to(dtype), [weights[i].shape[0]], [1, 1], [1, 1], [1, 1], False,
                [0, 0], 1, [need_x, ctx.needs_input_grad[3 + i], ctx.has_bias[i] and ctx.needs_input_grad[3 + layers + i]],
            )  # fmt: skip
            d_weights[i] = None if d_w is None else d_w.float()
            d_biases[i] = None if d_b is None else d_b.float()
            if i > 0:
                grad = torch.ops.aten.threshold_backward(d_x, inputs[i], 0)  # ReLU's: where its output was > 0
        d_input = None if d_x is None else d_x.float()
        return d_input, None, None, *d_weights, *d_biases


def _forward_in(dtype, x, weights, biases, inputs: list | None = None) -> torch.Tensor:
    """The plain network's forward with its hidden layers in `dtype` (float32 weights cast per call,
    accumulation in float32 inside oneDNN), returned in x's dtype; each layer's input is appended to
    `inputs` when given (for the backward, which runs each layer in its input's dtype).

    The first and the last layer stay in x's dtype: they hold the image and the residual, where
    bfloat16's 8 bits cost the most (a grey level is 2^-8), and with 3 channels they are a few percent
    of the time, running far below the core's rate in either precision."""
    h = x
    for i, (weight, bias) in enumerate(zip(weights, biases)):
        layer_dtype = x.dtype if i in (0, len(weights) - 1) else dtype
        h = h.to(layer_dtype)
        if inputs is not None:
            inputs.append(h)
        h = F.conv2d(h, weight.to(layer_dtype), None if bias is None else bias.to(layer_dtype), padding=1)
        if i < len(weights) - 1:
            h = torch.relu_(h)
    return h


def _conv2d(x, weight, dtype):
    return F.conv2d(x.to(dtype), weight.to(dtype), padding=1).to(x.dtype)


def _conv_backward(grad, x, weight, mask, dtype):
    """oneDNN's backward of a 3x3, stride-1, padding-1 convolution, computed in `dtype`: (input,
    weight, bias) gradients for the entries of `mask` (in the tensors' own dtype), None for the others."""
    outs = torch.ops.aten.convolution_backward(
        grad.to(dtype), x.to(dtype), weight.to(dtype), [weight.shape[0]], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask
    )
    return tuple(None if o is None else o.to(grad.dtype) for o in outs)


class _Conv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, dtype):
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.dtype = bias is not None, dtype
        return F.conv2d(x, weight, bias, padding=1)  # float32 (module docstring)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return (*ConvGrad.apply(grad, x, weight, ctx.needs_input_grad[0], ctx.has_bias, ctx.dtype), None)


class ConvGrad(torch.autograd.Function):
    """The gradients (input, weight, bias) of a 3x3 convolution, as a differentiable function of the
    output gradient, the input and the weight, computed in `dtype`. Its own backward (the
    second-order pass), in `dtype` too:

        d grad   = conv(gg_x, weight) + conv(x, gg_weight) + gg_bias
        d x      = input gradient of conv(., gg_weight) at `grad`
        d weight = weight gradient of conv(gg_x, .) at `grad`
    """

    @staticmethod
    def forward(ctx, grad, x, weight, need_x: bool, has_bias: bool, dtype: torch.dtype):
        ctx.save_for_backward(grad, x, weight)
        ctx.dtype = dtype
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no convolution of zeros
        return _conv_backward(grad, x, weight, [need_x, True, has_bias], dtype)

    @staticmethod
    def backward(ctx, gg_x, gg_w, gg_b):
        grad, x, weight = ctx.saved_tensors
        need_grad, need_x, need_w = ctx.needs_input_grad[:3]
        d_grad = d_x = d_w = None
        if need_grad:
            terms = []
            if gg_x is not None:
                terms.append(_conv2d(gg_x, weight, ctx.dtype))
            if gg_w is not None:
                terms.append(_conv2d(x, gg_w, ctx.dtype))
            if gg_b is not None:
                terms.append(gg_b.view(1, -1, 1, 1).expand_as(grad))
            d_grad = sum(terms[1:], terms[0]) if terms else None
        if need_x and gg_w is not None:
            d_x = _conv_backward(grad, x, gg_w, [True, False, False], ctx.dtype)[0]
        if need_w and gg_x is not None:
            d_w = _conv_backward(grad, gg_x, weight, [False, True, False], ctx.dtype)[1]
        return d_grad, d_x, d_w, None, None, None
