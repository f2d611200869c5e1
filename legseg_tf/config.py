"""Frozen run configuration. Every default lives here, once."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

REGIONS = ("legs", "upper", "lower", "hip", "legs-hip")
DEVICES = ("auto", "cpu", "gpu")
MERGE_MODES = ("gaussian", "qmritools")
PRECISIONS = ("float32", "bfloat16")


@dataclass(frozen=True)
class InferenceConfig:
    """How the segmentation networks are run.

    Attributes:
        region: what to segment: "legs" (lower + upper leg), "upper", "lower", "hip" or
            "legs-hip" (lower + upper leg + hip).
        device: "auto" (GPU when TensorFlow sees one), "cpu" or "gpu".
        mem_gb: memory budget in GB for the whole process; the network's tiles are sized to
            keep its peak within it (None = derived from the machine,
            :func:`legseg_tf.device.default_budget_gb`).
        merge: "gaussian" (Gaussian-weighted softmax blending of overlapping tiles) or
            "qmritools" (the original hard-label union).
        overlap: fraction of a tile that overlaps its neighbour when several tiles are needed.
        batch_size: tiles per network call.
        save_probabilities: also write a 4-D probseg image.
        models_dir: folder holding ``manifest.json``.
        nprocs: CPU threads for TensorFlow and the array stages (None = all available).
        segmentation_resolution: voxel size the networks run at: "model" (the region
            networks' training voxel size from their manifest provenance, else native),
            "native" (QMRITools' default) or (dz, dy, dx) in mm (:mod:`legseg_tf.resampling`).
        min_patch: smallest tile (z, y, x) in voxels of the networks' grid the memory budget
            may shrink a tile to (rounded up to the network's stride, never larger than the
            part): the patch the networks are trained on (``TrainSegmentationNetwork``'s
            32 x 112 x 112). Smaller tiles see too little context to segment anything; when the
            budget cannot hold this tile the process runs it anyway and may exceed ``mem_gb``.
        precision: arithmetic of the region networks' forward pass: "float32", or "bfloat16"
            (Keras mixed precision with a float32 output layer, for CPUs with AVX-512 BF16 or
            AMX and for GPUs; label maps may differ from float32 in some voxels, see
            docs/benchmarks.md).
    """

    region: str = "legs"
    device: str = "auto"
    mem_gb: float | None = None
    merge: str = "gaussian"
    overlap: float = 0.5
    batch_size: int = 1
    save_probabilities: bool = False
    models_dir: Path | None = None
    nprocs: int | None = None
    segmentation_resolution: str | tuple[float, float, float] = "model"
    precision: str = "float32"
    min_patch: tuple[int, int, int] = (32, 112, 112)

    def __post_init__(self) -> None:
        if self.region not in REGIONS:
            raise ValueError(f"region must be one of {REGIONS}, got {self.region!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.merge not in MERGE_MODES:
            raise ValueError(f"merge must be one of {MERGE_MODES}, got {self.merge!r}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise ValueError(f"mem_gb must be positive, got {self.mem_gb}")
        if len(self.min_patch) != 3 or any(int(p) < 1 for p in self.min_patch):
            raise ValueError(f"min_patch must be three positive sizes, got {self.min_patch}")
        if self.nprocs is not None and self.nprocs < 1:
            raise ValueError(f"nprocs must be >= 1, got {self.nprocs}")
        resolution = self.segmentation_resolution
        if isinstance(resolution, str):
            if resolution not in ("model", "native"):
                raise ValueError(f"segmentation_resolution must be 'model', 'native' or three "
                                 f"sizes in mm, got {resolution!r}")
        elif len(resolution) != 3 or not all(float(v) > 0 for v in resolution):
            raise ValueError(f"segmentation_resolution needs three positive sizes in mm, got "
                             f"{resolution!r}")


@dataclass(frozen=True)
class RunConfig:
    """Everything one BIDS-App invocation needs, resolved from the command line."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    participant_labels: tuple[str, ...] = ()
    session_labels: tuple[str, ...] = ()
    bids_filters: dict | None = None
    work_dir: Path | None = None
    #: folder that keeps the pybids index of bids_dir between runs (--bids-database-dir);
    #: None indexes the dataset in memory on every run.
    bids_database_dir: Path | None = None
    overwrite: bool = False
    skip_bids_validator: bool = False
    verbosity: int = 0
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    command_line: tuple[str, ...] = ()
    #: axis codes (e.g. "RAS") assumed for inputs whose header has no orientation
    #: (sform_code = qform_code = 0); None refuses such inputs.
    assume_orientation: str | None = None
    #: group level: keep images with a QC "fail" flag in the group statistics.
    include_failed_qc: bool = False
    #: in-plane erosion (voxels) of each muscle for the eroded fat-fraction columns of the
    #: participant tables (--ff-erosion); 0 leaves those columns out.
    ff_erosion: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.ff_erosion, bool) or int(self.ff_erosion) != self.ff_erosion \
                or self.ff_erosion < 0:
            raise ValueError(f"ff_erosion must be a whole number >= 0, got {self.ff_erosion!r}")

    def to_json(self) -> str:
        """JSON of the resolved configuration (paths as strings)."""
        return json.dumps(asdict(self), default=str, indent=2, sort_keys=True)
