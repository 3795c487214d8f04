"""The parts every Transformer layer is made of: embeddings, positional encodings, the feed-forward network,
normalisation and the residual "Add & Norm" connection.

Shapes: B batch, T sequence length, D d_model, F d_ff, V vocab.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from aiayn.config import ModelConfig
from aiayn.errors import RequestError
from aiayn.model.kernels import SDPA, Kernels


class Dropout(nn.Module):
    """Inverted dropout (paper §5.4): zero each element with probability p, scale the rest by 1 / (1 - p).

    F.dropout, unless the model's runner chose `Kernels(cpu_dropout=True)` (the trainer does on the CPU): then on
    the CPU the keep-mask comes from 16-bit random integers, four from each 64-bit draw of torch's generator, and
    is applied with one `where`. PyTorch's CPU dropout draws one Bernoulli number per element, and was a fifth
    of a small model's training step (fwd + bwd of a 4096 x 128 activation: 7.9 ms -> 4.1 ms). p is then applied
    in steps of 1/65536.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.kernels: Kernels = SDPA  # set by whoever runs the model (aiayn.model.kernels.use_kernels)
        self.p = p
        self.threshold = round(p * 65536) - 32768  # keep where a uniform int16 is >= this: P(keep) = 1 - p
        self.scale = 1.0 / (1.0 - p) if p < 1 else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or not self.kernels.cpu_dropout:
            return F.dropout(x, self.p, training=True)
        n = x.numel()
        # random_ over the full int64 range: without bounds it leaves the top bit 0, which would bias every
        # fourth int16 toward "keep".
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
        keep = bits.view(torch.int16)[:n].view(x.shape) >= self.threshold  # same shape as x
        return torch.where(keep, x * self.scale, 0.0)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class TokenEmbedding(nn.Module):
    """Token ids -> vectors, multiplied by sqrt(d_model) (paper §3.4) when `scale` is set."""

    def __init__(self, vocab_size: int, d_model: int, scale: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
        # std d_model^-0.5: after the sqrt(d_model) scaling the inputs have unit variance, and the same matrix
        # used as the pre-softmax weight (tied, §3.4) gives logits of order 1 at initialisation.
        nn.init.normal_(self.weight, std=d_model**-0.5)
        self.scale = math.sqrt(d_model) if scale else 1.0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) -> (B, T, D)."""
        x = F.embedding(ids, self.weight)
        return x * self.scale if self.scale != 1.0 else x


def sinusoidal_table(max_len: int, d_model: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i / d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i / d_model)) (§3.5).

    Returns (max_len, D) in fp32, computed in fp64 so that large positions keep their precision.
    """
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]  # (max_len, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)[None, :]  # (1, D/2)
    angle = pos / torch.pow(10000.0, two_i / d_model)  # (max_len, D/2)
    table = torch.empty(max_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle)
    return table.float()


class SinusoidalPositionalEncoding(nn.Module):
    """The paper's fixed positional encoding: a table, not a parameter (and not saved in checkpoints)."""

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        self.register_buffer("table", sinusoidal_table(max_len, d_model), persistent=False)

    def forward(self, length: int, offset: int = 0) -> torch.Tensor:
        """Encodings of positions offset .. offset+length-1: (T, D)."""
        _check_length(offset + length, self.table.shape[0])
        return self.table[offset : offset + length]


class LearnedPositionalEmbedding(nn.Module):
    """One trained vector per position (paper Table 3 row E; GPT-2)."""

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_len, d_model))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, length: int, offset: int = 0) -> torch.Tensor:
        """Embeddings of positions offset .. offset+length-1: (T, D)."""
        _check_length(offset + length, self.weight.shape[0])
        return self.weight[offset : offset + length]


def _check_length(needed: int, max_len: int) -> None:
    if needed > max_len:
        raise RequestError(f"sequence of {needed} positions is longer than the model's max_len={max_len}")


class InputEmbedding(nn.Module):
    """Token embedding (scaled) + positional encoding, then dropout (§5.4: "we apply dropout to the sums of the
    embeddings and the positional encodings"). With rotary positions nothing is added here."""

    def __init__(self, config: ModelConfig, token: TokenEmbedding) -> None:
        super().__init__()
        self.token = token
        if config.positional == "sinusoidal":
            self.position: nn.Module | None = SinusoidalPositionalEncoding(config.d_model, config.max_len)
        elif config.positional == "learned":
            self.position = LearnedPositionalEmbedding(config.d_model, config.max_len)
        else:
            self.position = None
        self.dropout = Dropout(config.dropout)

    def forward(self, ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """ids (B, T) at positions offset .. offset+T-1 -> (B, T, D)."""
        x = self.token(ids)
        if self.position is not None:
            x = x + self.position(ids.shape[1], offset)  # (T, D) broadcasts over the batch
        return self.dropout(x)


class FeedForward(nn.Module):
    """Position-wise feed-forward network (§3.3): FFN(x) = max(0, x W1 + b1) W2 + b2, or a variant.

    "gelu" / "gelu_tanh" / "swish" replace the ReLU; "swiglu" is W2 (swish(x W1) * x W3) (Shazeer 2020),
    with W1 and W3 fused into one D -> 2F projection.
    """

    _ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "relu": F.relu,
        "gelu": F.gelu,
        "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "swish": F.silu,
    }

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, f = config.d_model, config.d_ff
        self.gated = config.activation == "swiglu"
        self.w1 = nn.Linear(d, 2 * f if self.gated else f, bias=config.bias)
        self.w2 = nn.Linear(f, d, bias=config.bias)
        self.activation = None if self.gated else self._ACTIVATIONS[config.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D)."""
        h = self.w1(x)  # (B, T, F), or (B, T, 2F) when gated
        if self.gated:
            gate, up = h.chunk(2, dim=-1)  # each (B, T, F)
            return self.w2(F.silu(gate) * up)
        return self.w2(self.activation(h))


def make_norm(config: ModelConfig) -> nn.Module:
    """LayerNorm (the paper, Ba et al. 2016) or RMSNorm (Zhang & Sennrich 2019)."""
    if config.norm_type == "rmsnorm":
        return nn.RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps)


class AddNorm(nn.Module):
    """The residual connection around a sublayer, with dropout and normalisation (§3.1, §5.4).

    post-LN (the paper): LayerNorm(x + Dropout(Sublayer(x)))
    pre-LN:              x + Dropout(Sublayer(LayerNorm(x)))
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm = make_norm(config)
        self.dropout = Dropout(config.dropout)
        self.pre = config.norm == "pre"

    def forward(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.pre:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


def softmax(logits: torch.Tensor, temperature: float = 1.0, dim: int = -1) -> torch.Tensor:
    """The output softmax with a temperature: softmax(logits / T). T < 1 sharpens the distribution, T > 1
    flattens it, T = 1 is the plain softmax. Computed in fp32 (bf16 logits would lose small probabilities)."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise RequestError(f"temperature={temperature} must be a finite number > 0 (use greedy decoding for T = 0)")
    return torch.softmax(logits.float() / temperature, dim=dim)
