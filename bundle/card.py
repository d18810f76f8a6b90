"""The model card: what a bundle's ``card.json`` holds, as frozen dataclasses (schema version 1).

The card is the contract between training/export and the daemon: it says how to preprocess a
frame for this model (the same code runs in training), how the frame may be tiled, what data the
model was trained on (its *envelope*, which drift checks compare frames against), and where the
weights came from. ``docs/bundle.md`` documents every field.

Parsing is strict: unknown keys, wrong types and out-of-range values raise :class:`CardError`
naming the JSON path of the bad value, e.g. ``envelope.pixel_size_nm.min``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from dataclasses import dataclass, field
from typing import Any

from fringelive.bundle.typed import Dialect, parse

__all__ = [
    "SCHEMA_VERSION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "CardError",
    "Range",
    "Preprocessing",
    "Tolerances",
    "Envelope",
    "TileConstraints",
    "Architecture",
    "Member",
    "Engine",
    "Source",
    "Provenance",
    "Card",
    "RESCALE_MODES",
    "utc_now_iso",
]

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
RESCALE_MODES = ("standardize", "normalize", "histogram")
#: the largest ``Preprocessing.lowpass_sigma_px`` (px): beyond it the low-pass would erase the
#: lattice fringes of the finest sampled frames, and a coarser frame is the better fix
MAX_LOWPASS_SIGMA_PX = 4.0
#: class-1 probability of a pixel of a particle's confident core when the card does not say
#: (``Card.particle_core_probability``; ``engine.particle_measure``)
DEFAULT_PARTICLE_CORE_PROBABILITY = 0.95


class CardError(ValueError):
    """A card that does not parse or validate; the message names the offending key and value."""


@dataclass(frozen=True)
class Range:
    """Closed interval ``[min, max]`` in the unit of the field that holds it."""

    min: float
    max: float

    def __post_init__(self) -> None:
        if self.min > self.max:
            raise CardError(f"range min {self.min!r} is above max {self.max!r}")

    def contains(self, value: float) -> bool:
        return self.min <= value <= self.max

    @property
    def center(self) -> float:
        return 0.5 * (self.min + self.max)


@dataclass(frozen=True)
class Preprocessing:
    """Parameters of the shared preprocessing engine (``fringelive.engine.preprocess``).

    xray_threshold_counts: pixels above median + this many counts are x-ray hits.
    flatfield_degree: Bernstein/Bezier surface degree (rows, columns).
    flatfield_downsample: the surface is fitted on the image binned by this factor.
    flatfield_iterations: iteratively reweighted least-squares passes after the first fit.
    flatfield_weight_scale: weight ``exp(-scale * e / mean(e))`` on squared residual ``e``.
    rescale: standardize (zero mean, unit std) | normalize (min-max to [0, 1]) |
        histogram (clip to the percentiles, then min-max).
    lowpass_sigma_px: after the rescale, a Gaussian low-pass of this σ (px; 0 = off), which
        removes the camera's pixel-scale noise texture (``fringelive.engine.preprocess.lowpass``).
    """

    xray_removal: bool = True
    xray_threshold_counts: float = 1500.0
    xray_passes: int = 2
    flatfield: bool = True
    flatfield_degree: tuple[int, int] = (2, 2)
    flatfield_downsample: int = 4
    flatfield_iterations: int = 2
    flatfield_weight_scale: float = 1.5
    rescale: str = "standardize"
    histogram_percentiles: tuple[float, float] = (1.0, 99.0)
    lowpass_sigma_px: float = 0.0

    def __post_init__(self) -> None:
        if self.rescale not in RESCALE_MODES:
            raise CardError(f"preprocessing.rescale must be one of {RESCALE_MODES}, got {self.rescale!r}")
        if self.xray_threshold_counts <= 0:
            raise CardError(f"preprocessing.xray_threshold_counts must be > 0, got {self.xray_threshold_counts!r}")
        if self.xray_passes < 0:
            raise CardError(f"preprocessing.xray_passes must be >= 0, got {self.xray_passes!r}")
        if len(self.flatfield_degree) != 2 or min(self.flatfield_degree) < 0:
            raise CardError(f"preprocessing.flatfield_degree must be two degrees >= 0, got {self.flatfield_degree!r}")
        if self.flatfield_downsample < 1:
            raise CardError(f"preprocessing.flatfield_downsample must be >= 1, got {self.flatfield_downsample!r}")
        if self.flatfield_iterations < 0:
            raise CardError(f"preprocessing.flatfield_iterations must be >= 0, got {self.flatfield_iterations!r}")
        lo, hi = self.histogram_percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise CardError(f"preprocessing.histogram_percentiles must satisfy 0 <= lo < hi <= 100, got {self.histogram_percentiles!r}")
        if not 0.0 <= self.lowpass_sigma_px <= MAX_LOWPASS_SIGMA_PX:
            raise CardError(f"preprocessing.lowpass_sigma_px must be in [0, {MAX_LOWPASS_SIGMA_PX}] (px), "
                            f"got {self.lowpass_sigma_px!r}")


@dataclass(frozen=True)
class Tolerances:
    """How far outside the envelope a frame may lie before it is flagged.

    Relative tolerances are fractions of the envelope bound (0.1 = 10 %); a frame within the
    envelope is ``ok``, within the tolerance ``warn``, beyond it ``ood``.
    """

    pixel_size_rel: float = 0.10
    dose_rel: float = 0.30
    voltage_kv: float = 5.0
    particle_diameter_rel: float = 0.5


@dataclass(frozen=True)
class Envelope:
    """The training data's conditions. Units: nm, nm/pixel, e/Å², kV."""

    material: tuple[str, ...] = ()
    particle_diameter_nm: Range | None = None
    pixel_size_nm: Range | None = None
    dose_e_per_A2: Range | None = None
    voltage_kv: Range | None = None
    support: tuple[str, ...] = ()
    tolerances: Tolerances = field(default_factory=Tolerances)


@dataclass(frozen=True)
class TileConstraints:
    """Input shape rules for the network.

    multiple_of: H and W of every network input are multiples of this (the downsampling factor).
    receptive_field_radius_px: pixels on each side of an output that can influence it.
    halo_px: radius rounded up to ``multiple_of``; the tiler's minimum overlap margin.
    min_size_px: smallest accepted H or W.
    """

    multiple_of: int
    receptive_field_radius_px: int
    halo_px: int
    min_size_px: int

    def __post_init__(self) -> None:
        if self.multiple_of < 1:
            raise CardError(f"tile.multiple_of must be >= 1, got {self.multiple_of!r}")
        if self.halo_px < self.receptive_field_radius_px or self.halo_px % self.multiple_of:
            raise CardError(
                f"tile.halo_px must be a multiple of {self.multiple_of} and >= the receptive field radius "
                f"{self.receptive_field_radius_px}, got {self.halo_px!r}"
            )
        if self.min_size_px < self.multiple_of or self.min_size_px % self.multiple_of:
            raise CardError(f"tile.min_size_px must be a positive multiple of {self.multiple_of}, got {self.min_size_px!r}")

    def check_input_shape(self, height: int, width: int) -> None:
        """Raise :class:`CardError` if ``(height, width)`` cannot be fed to the network as is."""
        for name, v in (("height", height), ("width", width)):
            if not isinstance(v, int) or v < self.min_size_px or v % self.multiple_of:
                raise CardError(
                    f"input {name} {v!r} is impossible for this model: it must be a multiple of "
                    f"{self.multiple_of} and >= {self.min_size_px} px"
                )


@dataclass(frozen=True)
class Architecture:
    """Registry name, constructor arguments (``UNetSpec`` fields) and parameter count."""

    name: str
    spec: dict[str, Any]
    parameters: int


@dataclass(frozen=True)
class Member:
    """One ensemble member: an ONNX file in the bundle directory. Input ``image`` (N,1,H,W)
    float32 preprocessed, output ``logits`` (N,C,H,W) float32. ``weights`` optionally names a
    torch ``state_dict`` file of the same network (for the torch backend and fine-tuning)."""

    file: str
    sha256: str
    source: str | None = None
    input_name: str = "image"
    output_name: str = "logits"
    weights: str | None = None
    weights_sha256: str | None = None


@dataclass(frozen=True)
class Engine:
    """A verified engine of one member: a TensorRT engine built for one GPU/TensorRT version
    (``kind = "tensorrt"``, the default), or the record of a runtime-compiled precision's parity
    check on one CPU (e.g. ``kind = "openvino"``, ``precision = "bf16"``; no file).

    member: the ONNX member file it was built from. precision: ``fp32`` | ``fp16`` | ``bf16`` | ``int8``.
    TensorRT (all required for ``kind = "tensorrt"``): file / sha256 (the ``.plan``),
    tensorrt_version, gpu / compute_capability (e.g. ``NVIDIA H100 80GB HBM3`` / ``9.0``; engines
    only run there), profile (input ``image``'s ``{"min"|"opt"|"max": [N, 1, H, W]}``);
    max_abs_diff_vs_onnxruntime: max abs logit difference from ONNX Runtime (CPU) on a random
    input at the ``opt`` shape, accepted when <= ``tolerance``; argmax_agreement: fraction of
    pixels whose predicted class agrees, accepted when >= ``min_argmax_agreement``.
    Precision gate (``engine/precision.py``; against the same runtime in FP32 on the bundle's
    verification tiles): reference_precision, versions (``{"openvino": "2026.4.1"}``), cpu (model
    name), isa, verification_tiles (where the tiles came from), pixels, argmax_agreement /
    min_argmax_agreement, dice / min_dice (class-1 masks), max_abs_diff_vs_fp32, passed.
    """

    member: str
    precision: str
    kind: str = "tensorrt"
    file: str | None = None
    sha256: str | None = None
    tensorrt_version: str | None = None
    gpu: str | None = None
    compute_capability: str | None = None
    profile: dict[str, list[int]] | None = None
    max_abs_diff_vs_onnxruntime: float | None = None
    tolerance: float | None = None
    argmax_agreement: float | None = None
    min_argmax_agreement: float | None = None
    reference_precision: str | None = None
    versions: dict[str, str] | None = None
    cpu: str | None = None
    isa: tuple[str, ...] = ()
    verification_tiles: str | None = None
    pixels: int | None = None
    dice: float | None = None
    min_dice: float | None = None
    max_abs_diff_vs_fp32: float | None = None
    passed: bool | None = None

    def __post_init__(self) -> None:
        if self.kind == "tensorrt":
            missing = [n for n in ("file", "sha256", "tensorrt_version", "gpu", "compute_capability", "profile")
                       if getattr(self, n) is None]
            if missing:
                raise CardError(f"engines: a tensorrt engine of member {self.member!r} needs {missing}")


@dataclass(frozen=True)
class Source:
    path: str
    sha256: str


@dataclass(frozen=True)
class Provenance:
    """Where the bundle came from: source files (sha256), time (UTC ISO 8601), package versions,
    the command that made it."""

    created: str
    sources: tuple[Source, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)
    command: str | None = None
    notes: str | None = None


@dataclass(frozen=True)
class Card:
    name: str
    architecture: Architecture
    tile: TileConstraints
    members: tuple[Member, ...]
    provenance: Provenance
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    envelope: Envelope = field(default_factory=Envelope)
    classes: tuple[str, ...] = ("background", "particle")
    engines: tuple[Engine, ...] = ()
    drift_reference: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    description: str | None = None
    schema_version: int = SCHEMA_VERSION
    #: the bundle's operating point: class-1 probability above which a pixel is particle (0.5 =
    #: argmax; ``fringelive calibrate --choose-threshold`` picks it on labelled frames; the
    #: daemon's ``[pipeline] threshold`` overrides it)
    threshold: float = 0.5
    #: a connected component of the mask is a particle only when its mean class-1 probability
    #: reaches this (0 = every component; ``fringelive calibrate --choose-particle-confidence``
    #: picks it on labelled frames; the daemon's ``[particles] min_mean_probability`` overrides it)
    particle_min_mean_probability: float = 0.0
    #: a component is a particle only when its pixels of class-1 probability >=
    #: ``particle_core_probability`` make an equivalent-circle diameter of this (nm; 0 = off;
    #: ``fringelive calibrate --choose-particle-core`` picks it on labelled frames; the daemon's
    #: ``[particles] min_core_nm`` and ``core_probability`` override them)
    particle_min_core_nm: float = 0.0
    #: ... and only when that core covers at least this share of its area (0..1; 0 = off;
    #: ``fringelive calibrate --choose-particle-core-fraction``; ``[particles] min_core_fraction``)
    particle_min_core_fraction: float = 0.0
    #: ... and, for a component touching the frame edge, at least this share (0..1; 0 = off;
    #: ``--choose-particle-edge-core-fraction``; ``[particles] min_edge_core_fraction``)
    particle_min_edge_core_fraction: float = 0.0
    particle_core_probability: float = DEFAULT_PARTICLE_CORE_PROBABILITY

    def __post_init__(self) -> None:
        if self.schema_version not in SUPPORTED_SCHEMA_VERSIONS:
            raise CardError(
                f"schema_version {self.schema_version!r} is not supported by this fringelive "
                f"(supported: {list(SUPPORTED_SCHEMA_VERSIONS)})"
            )
        if not self.name:
            raise CardError("name must be a non-empty string")
        if not self.members:
            raise CardError("members must list at least one ONNX file")
        if len(self.classes) < 2:
            raise CardError(f"classes must name at least two classes, got {list(self.classes)!r}")
        files = [m.file for m in self.members]
        if len(set(files)) != len(files):
            raise CardError(f"members name the same file twice: {files!r}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0.0 < self.threshold < 1.0:
            raise CardError(f"threshold must be a probability in (0, 1), got {self.threshold!r}")
        v = self.particle_min_mean_probability
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise CardError(f"particle_min_mean_probability must be a probability in [0, 1), got {v!r}")
        v = self.particle_min_core_nm
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < float("inf"):
            raise CardError(f"particle_min_core_nm must be a diameter >= 0 nm, got {v!r}")
        for name in ("particle_min_core_fraction", "particle_min_edge_core_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise CardError(f"{name} must be a fraction in [0, 1), got {v!r}")
        v = self.particle_core_probability
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 1.0:
            raise CardError(f"particle_core_probability must be a probability in (0, 1), got {v!r}")

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _to_jsonable(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: Any) -> "Card":
        if not isinstance(d, dict):
            raise CardError(f"card must be a JSON object, got {type(d).__name__}")
        version = d.get("schema_version")
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            raise CardError(
                f"schema_version {version!r} is not supported by this fringelive "
                f"(supported: {list(SUPPORTED_SCHEMA_VERSIONS)})"
            )
        return _parse(cls, d, "")

    @classmethod
    def from_json(cls, text: str) -> "Card":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise CardError(f"card.json is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def replace(self, **changes: Any) -> "Card":
        return dataclasses.replace(self, **changes)


def utc_now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


# --- strict generic (de)serialisation ------------------------------------------------------

def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, Engine):  # an engine record lists only the fields of its kind
        return {f.name: _to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if getattr(obj, f.name) not in (None, ())}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    return obj


_JSON = Dialect(error=CardError)


def _parse(tp: Any, value: Any, path: str) -> Any:
    """Strict parsing of the card's JSON (the parser shared with the daemon config)."""
    return parse(tp, value, path, _JSON)
