"""What a golden case is: one small frozen record, its stable id, and the tables of
families and input distributions (spec section 5).

Pure Python: importing this never imports JAX.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from resblock.errors import GridError

# family -> (where parameters come from, purpose). Variants are rows, not code.
FAMILIES: dict[str, dict] = {
    "seeded": {
        "params": "init",
        "purpose": "the problem's exact API: batch 1, Flax init from PRNGKey(seed)",
    },
    "functional": {
        "params": "random",
        "purpose": "explicit non-init parameters and running stats, batch 1/2/4; catches "
        "mistakes that init values hide (missing conv bias, scale/bias swaps, stats)",
    },
    "stress": {
        "params": "random",
        "purpose": "ill-conditioned or degenerate inputs: variance near epsilon, large "
        "amplitude, large per-channel offset, 1 to 16 values per channel",
    },
}

# name -> (definition, purpose); the draw for each is in resblock.spec.derivation.
INPUTS: dict[str, dict] = {
    "normal": {"definition": "N(0, 1)", "amplitude": 1.0,
               "purpose": "well-conditioned baseline"},
    "lowamp": {
        "definition": "1e-3 * N(0, 1)",
        "amplitude": 1e-3,
        "purpose": "batch variance comparable to epsilon: epsilon placement and value matter",
    },
    "large": {
        "definition": "1e3 * N(0, 1)",
        "amplitude": 1e3,
        "purpose": "large magnitudes: relative error terms and the residual dominate",
    },
    "offset": {
        "definition": "N(0, 1) + o_c, o_c ~ U(-64, 64) per channel",
        "amplitude": 1.0,
        "purpose": "large per-channel mean: single-pass variance cancels (high kappa)",
    },
    "zeroinit": {
        "definition": "max(N(0, 1), 0); BatchNorm_1 scale and bias 0",
        "amplitude": 1.0,
        "purpose": "zero-init residual (torchvision's zero_init_residual=True) after a "
        "previous block's ReLU: the block outputs x, whose exact zeros make the ReLU "
        "derivative at 0 decide x_bar",
    },
    "deadchan": {
        "definition": "N(0, 1); BatchNorm_0 scale and bias 0 in channel 0",
        "amplitude": 1.0,
        "purpose": "a dead channel: relu1 sees exactly 0 in channel 0, so the ReLU "
        "derivative at 0 decides that channel's gradients",
    },
}

_ID_RE = re.compile(
    r"^(?P<family>[a-z]+)-(?P<inputs>[a-z]+)-n(?P<n>\d+)-(?P<h>\d+)x(?P<w>\d+)"
    r"-f(?P<features>\d+)-s(?P<seed>\d+)$"
)


@dataclass(frozen=True, order=True)
class Case:
    """One golden case. Every array of the case is derived from these fields alone."""

    family: str
    inputs: str
    n: int
    h: int
    w: int
    features: int
    seed: int

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise GridError(f"unknown family {self.family!r}; expected one of {sorted(FAMILIES)}")
        if self.inputs not in INPUTS:
            raise GridError(f"unknown inputs {self.inputs!r}; expected one of {sorted(INPUTS)}")
        for name in ("n", "h", "w", "features"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise GridError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) \
                or not 0 <= self.seed < 2**31:
            raise GridError(f"seed must be an integer in [0, 2^31), got {self.seed!r}")
        if self.family == "seeded" and self.n != 1:
            raise GridError(f"seeded cases have batch 1 (the problem's API), got n={self.n}")

    @property
    def id(self) -> str:
        return (
            f"{self.family}-{self.inputs}-n{self.n}-{self.h}x{self.w}"
            f"-f{self.features}-s{self.seed}"
        )

    @property
    def group(self) -> str:
        """Name of the shape group the case is stacked in (one HDF5 group per shape)."""
        return f"n{self.n}_h{self.h}_w{self.w}_f{self.features}"

    @property
    def params_source(self) -> str:
        return FAMILIES[self.family]["params"]

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.h, self.w, self.features)

    def derivation_string(self, role: str) -> str:
        """The normative string whose SHA-256 seeds the draw of ``role`` (spec 5.2)."""
        return (
            f"resblock/1|{self.family}|{self.inputs}|n={self.n}|h={self.h}|w={self.w}"
            f"|f={self.features}|seed={self.seed}|{role}"
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_id(cls, case_id: str) -> Case:
        m = _ID_RE.match(case_id)
        if not m:
            raise GridError(
                f"malformed case id {case_id!r}; expected "
                "FAMILY-INPUTS-nN-HxW-fF-sSEED, e.g. seeded-normal-n1-4x4-f4-s0"
            )
        d = m.groupdict()
        case = cls(
            family=d["family"], inputs=d["inputs"], n=int(d["n"]), h=int(d["h"]),
            w=int(d["w"]), features=int(d["features"]), seed=int(d["seed"]),
        )
        if case.id != case_id:
            raise GridError(f"case id {case_id!r} is not canonical; the case's id is "
                            f"{case.id!r} (no leading zeros)")
        return case


def unique(cases) -> list[Case]:
    """Return the cases as a list, refusing duplicate ids."""
    seen: dict[str, Case] = {}
    for c in cases:
        if c.id in seen:
            raise GridError(f"duplicate case id {c.id!r}: each case must appear once")
        seen[c.id] = c
    return list(seen.values())
