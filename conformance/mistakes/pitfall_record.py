"""What a pitfall row is: the :class:`Pitfall` record, the ``STAGES`` where a mistake can
first show and the ``RESULTS`` it can change; a row is checked when it is built. ``stage``
is the first intermediate of the spec's block where the mistake changes a value: conv1,
bn1, relu1, conv2, bn2, sum (bn2 + x), output (final ReLU) or batch_stats. ``affects``
lists which of the contract's results ("output", "batch_stats") it can change; a mistake
can change an intermediate and still leave the output intact (a conv bias is removed
again by the training-mode BatchNorm after it), and one that changes the output changes
BatchNorm_1's statistics too. The rows themselves are in
:mod:`resblock.conformance.mistakes.pitfall_table`.
"""

from __future__ import annotations

import dataclasses

STAGES = ("conv1", "bn1", "relu1", "conv2", "bn2", "sum", "output", "batch_stats")
RESULTS = ("output", "batch_stats")


@dataclasses.dataclass(frozen=True)
class Pitfall:
    """One known mistake.

    Attributes:
      name: key of the pitfall, equal to its wrong switch in ``variants``.
      title: a few words for a report line.
      explanation: what the implementation does differently, and where it comes from.
      fix: the change that makes it conform.
      variant: key of ``variants.VARIANTS`` that reproduces it.
      stage: first stage whose value diverges (one of :data:`STAGES`).
      affects: results of the contract that differ (default: both).
      families: case families where the mistake can happen (default: all); an init
        mistake exists only where the implementation initialises (``seeded``).
      min_values: fewest values per channel (N*H*W) at which the mistake can leave the
        error model's envelope (default 1); below it the mistake is a correct float32
        algorithm and the checker must accept it.
      match_profile: tolerance profile under which a result is compared with the twin
        when naming it (default "fp32"); a rounding mistake (TF32, bf16) is reproduced
        by its twin only to within that format's own rounding.
    """

    name: str
    title: str
    explanation: str
    fix: str
    variant: str
    stage: str
    affects: tuple[str, ...] = RESULTS
    families: tuple[str, ...] = ("seeded", "functional", "stress")
    min_values: int = 1
    match_profile: str = "fp32"

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"pitfall {self.name}: stage {self.stage!r} not in {STAGES}")
        if not self.affects or not set(self.affects) <= set(RESULTS):
            raise ValueError(f"pitfall {self.name}: affects {self.affects!r} not within {RESULTS}")
