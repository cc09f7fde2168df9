"""Names of the dtypes spikeep runs in, and the complex dtype that goes with each real one."""

import torch

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "complex64": torch.complex64,
    "complex128": torch.complex128,
}
COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}
REAL_OF = {v: k for k, v in COMPLEX_OF.items()}
