"""Values as the phases compute them: float32, checked before the conversion could overflow."""

from __future__ import annotations

import numpy as np

from regimen.core.errors import UserError

FLOAT32_MAX = float(np.finfo(np.float32).max)


def as_float32(name: str, what: str, a: np.ndarray) -> np.ndarray:
    """`a` as float32; a UserError naming the first value beyond float32's range (which the
    conversion would turn into Inf, and numpy into an overflow warning). NaN passes unchanged."""
    if a.dtype != np.float32 and np.issubdtype(a.dtype, np.floating):
        with np.errstate(invalid="ignore"):
            beyond = np.abs(a) > FLOAT32_MAX
        if beyond.any():
            where = tuple(int(i) for i in np.argwhere(beyond)[0])
            raise UserError(f"{name}: {what} holds {float(a[where]):g} at index {where}, beyond float32's range "
                            f"(+-{FLOAT32_MAX:.4g}) that the phases compute in; rescale the data")
    return a.astype(np.float32, copy=False)
