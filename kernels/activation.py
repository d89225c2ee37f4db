"""SiLU-and-mul: the gated MLP activation of the Llama family."""

import torch
import torch.nn.functional as F


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """Return silu(gate) * up for x = [gate | up].

    x: [num_tokens, 2 * intermediate_size] -> [num_tokens, intermediate_size]
    """
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up
