"""The golden HDF5 format (spec section 6): write atomically, read with validation.

Layout (plain datasets and one string dataset only; no pickles, no object timestamps)::

    /                      attrs: format_version, spec_version (strings)
    /metadata              scalar UTF-8 string: JSON, schema ``golden-metadata``
    /groups/<group>/       one group per shape (n, h, w, features); cases stacked on axis 0
        case_ids           (k,) strings
        x                  (k, N, H, W, C)  float32
        params/<Layer>/<p> (k, ...)         float32   Conv_0/kernel is (k, 3, 3, C, F)
        batch_stats_in/<BatchNorm_i>/{mean,var}      float32
        y                  (k, N, H, W, F)  float32   the Flax reference output
        batch_stats_out/<BatchNorm_i>/{mean,var}     float32
        oracle/y, oracle/batch_stats_out/..., oracle/stages/<stage>   float64
        budget[_conv|_store]/<t>, sigma[_conv|_store]/<t>             float32

Stacking one shape per group is ~5x faster to write and ~13x faster to read than one
group per case (measured, issue 2). Each case is sealed by a SHA-256 per part (forward,
stages, gradients: a reader verifies what it reads) and one over its index entry, which
holds those digests; the file's content hash covers every case hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from resblock.spec.cases import Case
from resblock.spec.constants import PARAM_NAMES, STAGES, STAT_NAMES

INPUT_ARRAYS = (
    ("x",)
    + tuple(f"params/{p}" for p in PARAM_NAMES)
    + tuple(f"batch_stats_in/{s}" for s in STAT_NAMES)
)
REFERENCE_ARRAYS = ("y",) + tuple(f"batch_stats_out/{s}" for s in STAT_NAMES)
ORACLE_ARRAYS = (
    ("oracle/y",)
    + tuple(f"oracle/batch_stats_out/{s}" for s in STAT_NAMES)
    + tuple(f"oracle/stages/{s}" for s in STAGES if s != "output")
)
# Per-element budgets of the error model (spec section 8): ``budget/<t>`` is the fp32
# budget, ``budget_conv/<t>`` the sensitivity to reduced-precision convolution inputs,
# ``budget_store/<t>`` (format 6) the sensitivity to values stored in a low type; a
# checker's bound is ``budget + u_conv * budget_conv + u_store * budget_store``.
BUDGET_TENSORS = (
    ("y",)
    + tuple(f"batch_stats_out/{s}" for s in STAT_NAMES)
    + tuple(f"stages/{s}" for s in STAGES if s != "output")
)
BUDGET_ARRAYS = tuple(f"{kind}/{t}" for kind in ("budget", "budget_conv", "budget_store")
                      for t in BUDGET_TENSORS)
# Spreads of the spread model (spec section 8.3, format 4): ``sigma/<t>`` and
# ``sigma_conv/<t>`` of the output and the running statistics, what the aggregate test
# of a tensor divides by.
SPREAD_TENSORS = ("y",) + tuple(f"batch_stats_out/{s}" for s in STAT_NAMES)
SPREAD_ARRAYS = tuple(f"{kind}/{t}" for kind in ("sigma", "sigma_conv", "sigma_store")
                      for t in SPREAD_TENSORS)
CASE_ARRAYS = INPUT_ARRAYS + REFERENCE_ARRAYS + ORACLE_ARRAYS + BUDGET_ARRAYS + SPREAD_ARRAYS
# Optional per group (format 2.1): the backward of spec section 10. ``grad/y_bar`` is the
# cotangent, ``grad/<t>`` the reference's gradient (jax.vjp of the Flax block, float32),
# ``oracle/grad/<t>`` the float64 oracle backward, ``budget[_conv]/grad/<t>`` its budgets;
# ``<t>`` is ``x`` or ``params/<Layer>/<leaf>``. A group has all of them or none.
GRAD_TENSORS = ("x",) + tuple(f"params/{p}" for p in PARAM_NAMES)
GRAD_ARRAYS = (("grad/y_bar",) + tuple(f"grad/{t}" for t in GRAD_TENSORS)
               + tuple(f"{kind}/grad/{t}" for kind in ("oracle", "budget", "budget_conv")
                       for t in GRAD_TENSORS))
GRAD_SPREAD_ARRAYS = tuple(f"{kind}/grad/{t}" for kind in ("sigma", "sigma_conv")
                           for t in GRAD_TENSORS)
GRAD_ARRAYS = GRAD_ARRAYS + GRAD_SPREAD_ARRAYS
# Optional per group (format 6): the inference block of spec section 12.
# ``inference/batch_stats/<BatchNorm_i>/{mean,var}`` are the running statistics the case
# normalises with (derived from the case key, spec 12.2), ``inference/y`` the reference's
# output (Flax, ``use_running_average=True``), ``oracle/inference/y`` the float64 oracle,
# ``budget[_conv|_store]/inference/y`` and ``sigma[_conv|_store]/inference/y`` its budgets
# and spreads. A group has all of them or none, but for the storage term (spec 12.4):
# a 6.0.0 file written before it has none of it, and a reader recomputes it from the
# inputs (GoldenCase.inference_store_data), as for the training storage arrays.
INFERENCE_STATS = tuple(f"inference/batch_stats/{s}" for s in STAT_NAMES)
INFERENCE_STORE_ARRAYS = ("budget_store/inference/y", "sigma_store/inference/y")
INFERENCE_STORE_MARKER = INFERENCE_STORE_ARRAYS[0]
INFERENCE_ARRAYS = (("inference/y",) + INFERENCE_STATS
                    + tuple(f"{kind}/inference/y" for kind in ("oracle", "budget",
                                                                 "budget_conv", "sigma",
                                                                 "sigma_conv"))
                    + INFERENCE_STORE_ARRAYS)
INFERENCE_MARKER = INFERENCE_ARRAYS[0]  # "inference/y"
_INFERENCE_STORE_SET = frozenset(INFERENCE_STORE_ARRAYS)
# Format 3 files have no spreads: read as before, without the aggregate test.
_SPREADS = frozenset(SPREAD_ARRAYS + GRAD_SPREAD_ARRAYS)
# Format 6 added the storage budgets and spreads (the fp16 and bf16 profiles); a reader
# of an older file recomputes them from the inputs (GoldenCase.store_data).
STORE_ARRAYS = tuple(n for n in BUDGET_ARRAYS + SPREAD_ARRAYS
                     if n.startswith(("budget_store/", "sigma_store/")))
_STORE_SET = frozenset(STORE_ARRAYS)
STORE_MARKER = "budget_store/y"


def has_store(names) -> bool:
    """Whether a group (or a set of arrays) carries the storage budgets (format 6)."""
    return STORE_MARKER in names


def has_inference_store(names) -> bool:
    """Whether a group (or a set of arrays) carries the inference block's storage term."""
    return INFERENCE_STORE_MARKER in names


# The parts of a case, each sealed by its own digest (format 3): a reader reads and
# verifies only the parts it uses. A forward check needs "forward" (inputs, outputs and
# the oracle and budgets of what it judges); the stages serve the diagnosis and the
# intermediates, the gradients the backward check.
_STAGE_TENSORS = tuple(t for t in BUDGET_TENSORS if t.startswith("stages/"))
STAGE_ARRAYS = tuple(f"{kind}/{t}" for kind in ("oracle", "budget", "budget_conv",
                                                 "budget_store")
                     for t in _STAGE_TENSORS)
_STAGE_SET = frozenset(STAGE_ARRAYS)
FORWARD_ARRAYS = tuple(n for n in CASE_ARRAYS if n not in STAGE_ARRAYS)
PARTS = {"forward": FORWARD_ARRAYS, "stages": STAGE_ARRAYS, "grad": GRAD_ARRAYS,
         "inference": INFERENCE_ARRAYS}
_PART_OF = {n: p for p, names in PARTS.items() for n in names}


def has_spreads(names) -> bool:
    """Whether a group (or a set of arrays) carries the spreads (format 4)."""
    return "sigma/y" in names


def part_arrays(names) -> dict[str, tuple[str, ...]]:
    """The parts of a group and their array names, given its names (:func:`group_parts`;
    without spreads for a format-3 group)."""
    keep, store = has_spreads(names), has_store(names)
    inf_store = has_inference_store(names)
    return {p: tuple(n for n in PARTS[p] if (keep or n not in _SPREADS)
                     and (store or n not in _STORE_SET)
                     and (inf_store or n not in _INFERENCE_STORE_SET))
            for p in group_parts(names)}


def part_of(name: str) -> str:
    """The part ("forward", "stages", "grad" or "inference") whose digest covers array
    ``name``."""
    return _PART_OF[name]


# Format 5: the stage data (oracles and budgets of the six stages, diagnosis only) is
# optional per group; a group has all of it or none. Formats 2-4 always have it.
STAGES_MARKER = STAGE_ARRAYS[0]  # "oracle/stages/conv1"


def has_stages(names) -> bool:
    """Whether a group (or a set of arrays) carries the stage data."""
    return STAGES_MARKER in names


def group_parts(names) -> tuple[str, ...]:
    """The parts a group holds, given its array names (or any set that has them)."""
    return (("forward",) + (("stages",) if has_stages(names) else ())
            + (("grad",) if "grad/y_bar" in names else ())
            + (("inference",) if has_inference(names) else ()))


def has_inference(names) -> bool:
    """Whether a group (or a set of arrays) carries the inference block (format 6)."""
    return INFERENCE_MARKER in names


def group_arrays(names) -> tuple[str, ...]:
    """The array names a group holds: CASE_ARRAYS (without the stage data unless
    ``names``, what a group or a set of arrays has, includes ``oracle/stages/conv1``),
    and GRAD_ARRAYS when it includes ``grad/y_bar``; the spreads only when it includes
    ``sigma/y`` (format 4); the storage budgets and spreads only when it includes
    ``budget_store/y`` (format 6); INFERENCE_ARRAYS when it includes ``inference/y``
    (their storage term only when it includes ``budget_store/inference/y``)."""
    out = CASE_ARRAYS + GRAD_ARRAYS if "grad/y_bar" in names else CASE_ARRAYS
    if has_inference(names):
        out = out + tuple(n for n in INFERENCE_ARRAYS if has_inference_store(names)
                          or n not in _INFERENCE_STORE_SET)
    if not has_stages(names):
        out = tuple(n for n in out if n not in _STAGE_SET)
    if not has_store(names):
        out = tuple(n for n in out if n not in _STORE_SET)
    return out if has_spreads(names) else tuple(n for n in out if n not in _SPREADS)


def flat_tree(prefix: str, tree: dict, names) -> dict:
    """``{"<prefix>/<Layer>/<leaf>": array}`` of a nested ``{Layer: {leaf: array}}`` tree
    for the ``names`` ("Layer/leaf"): how parameters and statistics are stored."""
    out = {}
    for name in names:
        layer, leaf = name.split("/")
        out[f"{prefix}/{name}"] = np.asarray(tree[layer][leaf])
    return out


# Storage (format 5): an array of a case that holds at least COMPRESS_MIN_BYTES is stored
# in chunks of one sample (one (H, W, C) image of one case), compressed with HDF5's
# built-in deflate; small arrays (the whole committed set) stay contiguous and
# unfiltered. Measured on functional-normal-n32-56x56-f64-s0 (stored / raw bytes,
# deflate level 1): x 0.86 with the byte shuffle (0.93 without), the budgets and
# spreads 0.76-0.81 with it (0.89 without), the outputs after a ReLU (y, oracle/y, the
# relu1 stage) 0.53-0.56 without it (0.62-0.65 with: their exact zeros compress better
# whole), the other float64 stages 0.89. Level 4 saves 1-2% more at twice the time.
COMPRESS_MIN_BYTES = 256 * 2**10
DEFLATE_LEVEL = 1
_UNSHUFFLED = frozenset({"y", "oracle/y", "oracle/stages/relu1"})


def storage_options(name: str, row_shape: tuple[int, ...], dtype) -> dict:
    """h5py ``create_dataset`` keywords for array ``name`` whose per-case rows have
    ``row_shape``: ``{}`` (contiguous, unfiltered) for small arrays, else chunks of one
    sample with deflate (and the byte shuffle but for the ReLU outputs)."""
    nbytes = int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if nbytes < COMPRESS_MIN_BYTES:
        return {}
    sample = len(row_shape) == 4 and not name.endswith("kernel")  # (N, H, W, C)
    chunk = (1,) + ((1,) + tuple(row_shape[1:]) if sample else tuple(row_shape))
    return {"chunks": chunk, "compression": "gzip", "compression_opts": DEFLATE_LEVEL,
            "shuffle": name not in _UNSHUFFLED}


# Stored bounds (spec 5.4, spec 6.0.0): every budget and spread a file holds
# (``budget*/``, ``sigma*/``) is the model's float32 value rounded up to BOUND_BITS
# significant bits, its low 12 mantissa bits zero. A bound rounded up stays a bound (at
# most BOUND_STEP = 2^-11 relative above the float32 value); with the byte shuffle the
# zero bits compress to almost nothing. Measured on functional-normal-n32-56x56-f64-s0
# (ISA-L deflate level 1, the six per-element model arrays of y): 122 MB stored as full
# float32, 66 MB at 12 bits (45 MB at 8 bits, a bound up to 2^-7 looser).
BOUND_BITS = 12
BOUND_STEP = 2.0 ** (1 - BOUND_BITS)
_BOUND_PREFIXES = ("budget/", "budget_conv/", "budget_store/", "sigma/", "sigma_conv/",
                   "sigma_store/")


def is_bound(name: str) -> bool:
    """Whether dataset ``name`` is a budget or a spread (stored by :func:`coarse_up`)."""
    return name.startswith(_BOUND_PREFIXES)


def coarse_up(a, copy: bool = True) -> np.ndarray:
    """``a`` (non-negative) as float32 rounded up to BOUND_BITS significant bits: the
    smallest such float32 at or above each float32 value. Zero, ``inf`` and NaN stay as
    they are. ``copy`` False: a writeable C-ordered float32 ``a`` is rounded in place
    and returned (rounding is idempotent, so an alias rounded twice is unchanged)."""
    if (not copy and isinstance(a, np.ndarray) and a.dtype == np.float32
            and a.flags.c_contiguous and a.flags.writeable):
        out = a
    else:
        out = np.array(a, np.float32, order="C")  # a copy: rounded in place
    bits = out.view(np.uint32)
    mask = np.uint32((1 << (24 - BOUND_BITS)) - 1)
    exponent = np.uint32(0x7F800000)
    need = (bits & mask) != 0
    need &= (bits & exponent) != exponent  # finite
    np.add(bits | mask, np.uint32(1), out=bits, where=need)
    return out


def coarse_bounds(arrays: dict) -> dict:
    """``arrays`` with every budget and spread (:func:`is_bound`) through
    :func:`coarse_up`: how a file stores them. The models' fresh float32 arrays are
    rounded in place (a copy of each at once cost 0.36 GB at 32x56x56x64 with the stage
    budgets), so a caller passes arrays nothing else reads unrounded."""
    return {k: coarse_up(v, copy=False) if is_bound(k) else v for k, v in arrays.items()}


def grad_path(name: str) -> str:
    """Where a gradient lives under ``grad/``, ``oracle/grad/``, ``budget[_conv]/grad/``,
    ``sigma[_conv]/grad/``:
    "x" -> "grad/x", "Conv_0/kernel" -> "grad/params/Conv_0/kernel"."""
    if name == "x":
        return "grad/x"
    if name in PARAM_NAMES:
        return f"grad/params/{name}"
    raise KeyError(f"no gradient named {name!r}")


def inference_path(name: str) -> str:
    """Where the inference block's checked tensor lives under ``oracle/``, ``budget[_conv]/``
    and ``sigma[_conv]/``: only its output, "output" -> "inference/y"."""
    if name == "output":
        return "inference/y"
    raise KeyError(f"no inference tensor named {name!r}: inference mode checks the output")


def tensor_path(name: str) -> str:
    """Where a checked tensor lives under ``oracle/``, ``budget/``, ``budget_conv/``:
    "output" -> "y", a stat -> "batch_stats_out/<stat>", a stage -> "stages/<stage>"."""
    if name == "output":
        return "y"
    if name in STAT_NAMES:
        return f"batch_stats_out/{name}"
    if name in STAGES:
        return f"stages/{name}"
    raise KeyError(f"no checked tensor named {name!r}")


def expected_shape(name: str, n: int, h: int, w: int, f: int) -> tuple[int, ...]:
    """Per-case shape of array ``name`` for a group of shape (n, h, w, f)."""
    leaf = name.rsplit("/", 1)[-1]
    if name == "x" or name.endswith("y") or "stages/" in name or name.endswith(("grad/x",
                                                                                   "y_bar")):
        return (n, h, w, f)
    if leaf == "kernel":
        return (3, 3, f, f)
    return (f,)


def expected_dtype(name: str) -> np.dtype:
    return np.dtype("<f8") if name.startswith("oracle/") else np.dtype("<f4")


# Index fields a case hash does not cover: where the case's rows are (checked against
# /groups/<group>/case_ids when a file is opened) and the hash itself. The part digests
# are covered, so the case hash seals them.
INDEX_UNHASHED = ("group", "row", "sha256")


def index_fields(entry: dict) -> dict:
    """The fields of an index entry that its case hash covers: every number that can
    change a verdict (kappa, ref_score, whatever an error model adds), not its location."""
    return {k: v for k, v in entry.items() if k not in INDEX_UNHASHED}


def _update(h, arrays: dict[str, np.ndarray]) -> None:
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.data)  # C-contiguous: hashed in place, no copy


def case_sha256(case_id: str, arrays: dict[str, np.ndarray], fields: dict | None = None) -> str:
    """SHA-256 over the case id, its index ``fields`` (canonical JSON; golden files always
    pass them, see :func:`index_fields`) and ``arrays`` (name, dtype, shape, LE C-order
    bytes). Format 3 passes no arrays: the fields hold the digests of the case's parts
    (:func:`part_sha256`), which cover them. Format 2 passed every array of the case."""
    h = hashlib.sha256(case_id.encode("utf-8") + b"\0")
    if fields is not None:
        h.update(b"index\0" + json.dumps(fields, sort_keys=True, separators=(",", ":"))
                 .encode("utf-8") + b"\0")
    _update(h, arrays)
    return h.hexdigest()


def part_sha256(case_id: str, part: str, arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the case id, the part's name and the part's arrays (as in
    :func:`case_sha256`)."""
    h = hashlib.sha256(f"{case_id}\0part\0{part}\0".encode())
    _update(h, arrays)
    return h.hexdigest()


def seal(entry: dict, rows: dict[str, np.ndarray]) -> dict:
    """Set ``entry["parts"]`` (a digest per part of the case's ``rows``, every array of
    the case) and ``entry["sha256"]`` (over the id and the index fields, parts included)."""
    entry["parts"] = {p: part_sha256(entry["id"], p, {n: rows[n] for n in names})
                      for p, names in part_arrays(rows).items()}
    entry["sha256"] = case_sha256(entry["id"], {}, index_fields(entry))
    return entry


def content_sha256(case_entries) -> str:
    """File content hash: SHA-256 over ``id:sha256`` lines, in index order."""
    h = hashlib.sha256()
    for e in case_entries:
        h.update(f"{e['id']}:{e['sha256']}\n".encode())
    return h.hexdigest()


def no_store_backward(prof) -> None:
    """The backward has no storage budgets yet: a profile that stores values in a low
    type (fp16, bf16) raises :class:`ProfileError`, saying what to use."""
    if prof.u_store:
        from resblock.spec.tolerance import ProfileError

        raise ProfileError(
            f"profile {prof.name!r} admits values stored in a low type, but the backward's "
            "error model has no storage term yet (spec section 10.4), so no gradient bound "
            "exists under it; check the backward under fp32, tf32-conv or bf16-conv, and "
            f"the training forward or the inference block under {prof.name}")


def checked_oracle(x, params, batch_stats, oracle_y=None):
    """The float64 oracle recomputed from a case's inputs; with ``oracle_y`` (the stored
    oracle of the output) it must agree to 1e-9 of its scale (as ``resblock verify``
    requires), else the inputs and the oracle do not belong together and
    :class:`GoldenFormatError` is raised."""
    from resblock.errors import GoldenFormatError
    from resblock.spec import oracle

    ref = oracle.forward(x, params, batch_stats)
    if oracle_y is not None:
        scale = max(float(np.max(np.abs(ref.y))), 1.0) if ref.y.size else 1.0
        dev = float(np.max(np.abs(np.asarray(oracle_y) - ref.y))) if ref.y.size else 0.0
        if not dev <= 1e-9 * scale:
            raise GoldenFormatError(
                f"the float64 oracle recomputed from the stored inputs differs from the "
                f"stored oracle/y by {dev:.3g}, so the stage data cannot be recomputed "
                "for this case: the file was made by another spec version or edited; run "
                "`resblock verify` on it")
    return ref


def stage_arrays(x, params, batch_stats, oracle_y=None) -> dict[str, np.ndarray]:
    """The stage data of a case (STAGE_ARRAYS: float64 oracles and float32 budgets of the
    six stages), recomputed from its inputs exactly as the generator computes it
    (``oracle_y``: see :func:`checked_oracle`)."""
    from resblock.spec import error_model, error_store

    ref = checked_oracle(x, params, batch_stats, oracle_y)
    b = error_model.budgets(x, params, batch_stats, ref.stages)
    st = error_store.model(x, params, batch_stats, ref.stages)
    out = {f"oracle/stages/{k}": np.asarray(v, np.float64) for k, v in ref.stages.items()}
    for stage in error_model.STAGE_TENSORS:
        out[f"budget/stages/{stage}"] = b.fp32[stage]
        out[f"budget_conv/stages/{stage}"] = b.conv[stage]
        out[f"budget_store/stages/{stage}"] = st.budget[stage]
    return coarse_bounds({n: out[n] for n in STAGE_ARRAYS})


def store_arrays(x, params, batch_stats, oracle_y=None) -> dict[str, np.ndarray]:
    """The storage budgets and spreads of a case (STORE_ARRAYS), recomputed from its
    inputs as the generator computes them: what a file older than format 6 lacks
    (``oracle_y``: see :func:`checked_oracle`)."""
    from resblock.spec import error_store

    ref = checked_oracle(x, params, batch_stats, oracle_y)
    st = error_store.model(x, params, batch_stats, ref.stages)
    out = {}
    for name, a in st.budget.items():
        out[f"budget_store/{tensor_path(name)}"] = a
    for name, a in st.sigma.items():
        out[f"sigma_store/{tensor_path(name)}"] = a
    return coarse_bounds({n: out[n] for n in STORE_ARRAYS})


def inference_store_arrays(x, params, running_stats) -> dict[str, np.ndarray]:
    """The inference block's storage budget and spread (INFERENCE_STORE_ARRAYS),
    recomputed from a case's inputs and running statistics as the generator computes
    them: what a 6.0.0 file written before the inference storage term lacks."""
    from resblock.spec import inference, inference_store

    ref = inference.forward(x, params, running_stats)
    st = inference_store.model(x, params, running_stats, ref.stages)
    return coarse_bounds({"budget_store/inference/y": st.budget,
                          "sigma_store/inference/y": st.sigma})


@dataclass(frozen=True)
class GoldenCase:
    """One case read from a golden file: its record, index entry and arrays (a mapping
    from array name to the case's row; a file's cases read each part on first use).

    A case stored without its stage data (format 5's default) recomputes it from its
    inputs the first time a stage's oracle or bound is asked for (:meth:`stage_data`)."""

    case: Case
    entry: dict
    arrays: Mapping
    derived: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def id(self) -> str:
        return self.case.id

    def detached(self) -> GoldenCase:
        """This case with every array read (and verified) now: usable after its file is
        closed."""
        return GoldenCase(case=self.case, entry=self.entry, arrays=dict(self.arrays),
                          derived=self.derived)

    @property
    def kappa(self) -> float:
        return float(self.entry["kappa"])

    def tree(self, prefix: str) -> dict:
        """Nested ``{layer: {leaf: array}}`` of arrays under ``prefix``."""
        out: dict = {}
        for name in self.arrays:  # names only: reading a part happens on indexing
            if name.startswith(prefix + "/"):
                layer, leaf = name[len(prefix) + 1 :].split("/")
                out.setdefault(layer, {})[leaf] = self.arrays[name]
        return out

    @property
    def has_stages(self) -> bool:
        """Whether the file stores this case's stage data (always, before format 5)."""
        return has_stages(self.arrays)

    def stage_data(self) -> Mapping:
        """The stage data (STAGE_ARRAYS names): stored, or recomputed from the inputs once
        (:func:`stage_arrays`, checked against the stored oracle of the output)."""
        if self.has_stages:
            return self.arrays
        if "stages" not in self.derived:
            self.derived["stages"] = stage_arrays(self.x, self.params, self.batch_stats_in,
                                                  self.arrays["oracle/y"])
        return self.derived["stages"]

    @property
    def has_store(self) -> bool:
        """Whether the file stores this case's storage budgets and spreads (format 6)."""
        return has_store(self.arrays)

    def store_data(self) -> Mapping:
        """The storage budgets and spreads (STORE_ARRAYS names): stored, or recomputed
        from the inputs once (:func:`store_arrays`) for a file older than format 6."""
        if self.has_store:
            return self.arrays
        if "store" not in self.derived:
            self.derived["store"] = store_arrays(self.x, self.params, self.batch_stats_in,
                                                 self.arrays["oracle/y"])
        return self.derived["store"]

    def _array(self, name: str) -> np.ndarray:
        if name in _STORE_SET and not self.has_store:
            return self.store_data()[name]
        if name in _STAGE_SET:
            return self.stage_data()[name]
        return self.arrays[name]

    def spread(self, path: str, prof) -> tuple:
        """``(sigma, sigma_conv, sigma_store)`` of a stored tensor path (``y``, a stat or
        a gradient's path); ``sigma_store`` None when the profile stores nothing low."""
        store = self._array(f"sigma_store/{path}") if prof.u_store else None
        return self.arrays[f"sigma/{path}"], self.arrays[f"sigma_conv/{path}"], store

    def reference(self, name: str) -> np.ndarray:
        """The float64 oracle of a checked tensor ("output", a stage or a stat)."""
        return self._array(f"oracle/{tensor_path(name)}")

    def bound(self, name: str, prof) -> np.ndarray:
        """Per-element bound of a checked tensor under a tolerance profile (float64)."""
        from resblock.spec.error_model import bound_from

        t = tensor_path(name)
        store = self._array(f"budget_store/{t}") if prof.u_store else None
        return bound_from(self._array(f"budget/{t}"), self._array(f"budget_conv/{t}"),
                          prof.u_conv, store, prof.u_store)

    @property
    def has_spreads(self) -> bool:
        """Whether the case carries the spreads of the aggregate test (format 4)."""
        return has_spreads(self.arrays)

    def aggregate_score(self, name: str, got, prof, grad: bool = False) -> float | None:
        """The aggregate test's score of a checked tensor ("output", a stat) or, with
        ``grad``, a gradient: ``Q`` over its threshold (spec section 8.3); None for a file
        without spreads."""
        from resblock.spec.tolerance import aggregate_score

        if not self.has_spreads:
            return None
        if grad:
            no_store_backward(prof)
        t = grad_path(name) if grad else tensor_path(name)
        ref = self.arrays[f"oracle/{t}"]
        sigma, sigma_conv, sigma_store = self.spread(t, prof)
        return aggregate_score(got, ref, sigma, sigma_conv, prof.u_conv, self.case.features,
                               sigma_store, prof.u_store)

    @property
    def has_grad(self) -> bool:
        """Whether the case carries the backward (format 2.1 gradient datasets)."""
        return "grad/y_bar" in self.arrays

    @property
    def y_bar(self):
        return self.arrays["grad/y_bar"]

    def grad_reference(self, name: str) -> np.ndarray:
        """The float64 oracle gradient of ``name`` ("x" or a parameter, "Conv_0/kernel")."""
        return self.arrays[f"oracle/{grad_path(name)}"]

    def grad_bound(self, name: str, prof) -> np.ndarray:
        """Per-element bound of a gradient under a tolerance profile (float64)."""
        from resblock.spec.error_model import bound_from

        no_store_backward(prof)
        t = grad_path(name)
        return bound_from(self.arrays[f"budget/{t}"], self.arrays[f"budget_conv/{t}"],
                          prof.u_conv)

    @property
    def has_inference(self) -> bool:
        """Whether the case carries the inference block (format 6, spec section 12)."""
        return has_inference(self.arrays)

    @property
    def running_stats(self) -> dict:
        """The running statistics of the inference block, ``{layer: {"mean", "var"}}``."""
        return self.tree("inference/batch_stats")

    def inference_reference(self) -> np.ndarray:
        """The float64 oracle of the inference block's output."""
        return self.arrays[f"oracle/{inference_path('output')}"]

    @property
    def has_inference_store(self) -> bool:
        """Whether the file stores the inference block's storage term (spec 12.4)."""
        return has_inference_store(self.arrays)

    def inference_store_data(self) -> Mapping:
        """The inference storage budget and spread (INFERENCE_STORE_ARRAYS names): stored,
        or recomputed from the inputs once (:func:`inference_store_arrays`)."""
        if self.has_inference_store:
            return self.arrays
        if "inference_store" not in self.derived:
            self.derived["inference_store"] = inference_store_arrays(
                self.x, self.params, self.running_stats)
        return self.derived["inference_store"]

    def inference_bound(self, prof) -> np.ndarray:
        """Per-element bound of the inference output under a tolerance profile."""
        from resblock.spec.error_model import bound_from

        t = inference_path("output")
        store = (self.inference_store_data()[f"budget_store/{t}"] if prof.u_store
                 else None)
        return bound_from(self.arrays[f"budget/{t}"], self.arrays[f"budget_conv/{t}"],
                          prof.u_conv, store, prof.u_store)

    def inference_aggregate_score(self, got, prof) -> float:
        """The aggregate test's score of the inference output (spec 12.4, as 8.5)."""
        from resblock.spec.tolerance import aggregate_score

        t = inference_path("output")
        store = (self.inference_store_data()[f"sigma_store/{t}"] if prof.u_store
                 else None)
        return aggregate_score(got, self.arrays[f"oracle/{t}"], self.arrays[f"sigma/{t}"],
                               self.arrays[f"sigma_conv/{t}"], prof.u_conv,
                               self.case.features, store, prof.u_store)

    def outside_profile(self, prof, inference: bool = False):
        """Why this case is outside a storage profile (spec 8.6, 12.4): the
        :class:`resblock.spec.store_range.Overflow` of a value a conforming port of the
        profile stores that may overflow its type; None when every value fits (always,
        under a profile that stores float32). ``inference``: the inference block's
        values (spec section 12) instead of the training block's."""
        from resblock.spec import store_range

        stype = store_range.storage_type(prof)
        if stype is None:
            return None
        key = ("outside", prof.name, inference)
        if key not in self.derived:
            values = (self._inference_values(prof) if inference else
                      self._training_values(prof))
            self.derived[key] = store_range.first_overflow(values, stype)
        return self.derived[key]

    def _training_values(self, prof) -> dict:
        from resblock.spec.store_range import training_values

        names = STAGES + STAT_NAMES
        stats_in = {n: self.arrays[f"batch_stats_in/{n}"] for n in STAT_NAMES}
        oracle = {n: self.reference(n) for n in names}
        bounds = {n: self.bound(n, prof) for n in names}
        return training_values(self.x, self.params, stats_in, oracle, bounds)

    def _inference_values(self, prof) -> dict:
        from resblock.spec import inference, inference_store
        from resblock.spec.error_model import SAFETY
        from resblock.spec.store_range import inference_values

        stats = self.running_stats
        ref = inference.forward(self.x, self.params, stats)
        stages = dict(ref.stages, output=ref.y)
        e, s = inference.raw_budgets(self.x, self.params, stats, ref.stages)
        t = inference_store.raw_budgets(self.x, self.params, stats, ref.stages)
        bounds = {n: SAFETY * (e[n] + prof.u_conv * s[n] + prof.u_store * t[n])
                  for n in stages}
        return inference_values(self.x, self.params, stats, stages, bounds, prof.u_store)

    @property
    def x(self):
        return self.arrays["x"]

    @property
    def params(self):
        return self.tree("params")

    @property
    def batch_stats_in(self):
        return self.tree("batch_stats_in")


from resblock.golden.reader import GoldenFile, open_golden  # noqa: E402,F401
