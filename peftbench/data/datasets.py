"""Dataset kinds as data: class names, label files, split folders and Sonata's recipe per dataset.

A kind describes a dataset in Pointcept's preprocessed layout (reference §8.4, §10, §11); the
reader (``peftbench.data.sources``) and ``peftbench data check`` use nothing else. Adding a
dataset in the same layout is one more entry in ``DATASET_KINDS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peftbench.data.synthetic import SYNTHETIC_CLASSES
from peftbench.errors import PeftbenchError

SCANNET20_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "desk", "curtain", "refridgerator", "shower curtain", "toilet", "sink", "bathtub", "otherfurniture",
)  # label order of Pointcept's ScanNet configs; "refridgerator" is their spelling, kept so names match logs

SCANNET200_CLASSES = (
    "wall", "chair", "floor", "table", "door", "couch", "cabinet", "shelf", "desk", "office chair", "bed", "pillow",
    "sink", "picture", "window", "toilet", "bookshelf", "monitor", "curtain", "book", "armchair", "coffee table",
    "box", "refrigerator", "lamp", "kitchen cabinet", "towel", "clothes", "tv", "nightstand", "counter", "dresser",
    "stool", "cushion", "plant", "ceiling", "bathtub", "end table", "dining table", "keyboard", "bag", "backpack",
    "toilet paper", "printer", "tv stand", "whiteboard", "blanket", "shower curtain", "trash can", "closet",
    "stairs", "microwave", "stove", "shoe", "computer tower", "bottle", "bin", "ottoman", "bench", "board",
    "washing machine", "mirror", "copier", "basket", "sofa chair", "file cabinet", "fan", "laptop", "shower",
    "paper", "person", "paper towel dispenser", "oven", "blinds", "rack", "plate", "blackboard", "piano",
    "suitcase", "rail", "radiator", "recycling bin", "container", "wardrobe", "soap dispenser", "telephone",
    "bucket", "clock", "stand", "light", "laundry basket", "pipe", "clothes dryer", "guitar",
    "toilet paper holder", "seat", "speaker", "column", "bicycle", "ladder", "bathroom stall", "shower wall", "cup",
    "jacket", "storage bin", "coffee maker", "dishwasher", "paper towel roll", "machine", "mat", "windowsill", "bar",
    "toaster", "bulletin board", "ironing board", "fireplace", "soap dish", "kitchen counter", "doorframe",
    "toilet paper dispenser", "mini fridge", "fire extinguisher", "ball", "hat", "shower curtain rod",
    "water cooler", "paper cutter", "tray", "shower door", "pillar", "ledge", "toaster oven", "mouse",
    "toilet seat cover dispenser", "furniture", "cart", "storage container", "scale", "tissue box", "light switch",
    "crate", "power outlet", "decoration", "sign", "projector", "closet door", "vacuum cleaner", "candle",
    "plunger", "stuffed animal", "headphones", "dish rack", "broom", "guitar case", "range hood", "dustpan",
    "hair dryer", "water bottle", "handicap bar", "purse", "vent", "shower floor", "water pitcher", "mailbox",
    "bowl", "paper bag", "alarm clock", "music stand", "projector screen", "divider", "laundry detergent",
    "bathroom counter", "object", "bathroom vanity", "closet wall", "laundry hamper", "bathroom stall door",
    "ceiling light", "trash bin", "dumbbell", "stair rail", "tube", "bathroom cabinet", "cd case", "closet rod",
    "coffee kettle", "structure", "shower head", "keyboard piano", "case of water bottles", "coat rack",
    "storage organizer", "folded chair", "fire alarm", "power strip", "calendar", "poster", "potted plant",
    "luggage", "mattress",
)  # CLASS_LABELS_200 of the ScanNet200 benchmark (label order of segment200.npy)

SCANNETPP_CLASSES = (
    "wall", "ceiling", "floor", "table", "door", "ceiling lamp", "cabinet", "blinds", "curtain", "chair",
    "storage cabinet", "office chair", "bookshelf", "whiteboard", "window", "box", "window frame", "monitor",
    "shelf", "doorframe", "pipe", "heater", "kitchen cabinet", "sofa", "windowsill", "bed", "shower wall",
    "trash can", "book", "plant", "blanket", "tv", "computer tower", "kitchen counter", "refrigerator", "jacket",
    "electrical duct", "sink", "bag", "picture", "pillow", "towel", "suitcase", "backpack", "crate", "keyboard",
    "rack", "toilet", "paper", "printer", "poster", "painting", "microwave", "board", "shoes", "socket", "bottle",
    "bucket", "cushion", "basket", "shoe rack", "telephone", "file folder", "cloth", "blind rail", "laptop",
    "plant pot", "exhaust fan", "cup", "coat hanger", "light switch", "speaker", "table lamp", "air vent",
    "clothes hanger", "kettle", "smoke detector", "container", "power strip", "slippers", "paper bag", "mouse",
    "cutting board", "toilet paper", "paper towel", "pot", "clock", "pan", "tap", "jar", "soap dispenser",
    "binder", "bowl", "tissue box", "whiteboard eraser", "toilet brush", "spray bottle", "headphones", "stapler",
    "marker",
)  # the ScanNet++ semantic benchmark's top-100 classes (metadata/semantic_benchmark/top100.txt order)

S3DIS_CLASSES = (
    "ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair", "sofa", "bookcase", "board",
    "clutter",
)

S3DIS_AREAS = tuple(f"Area_{k}" for k in range(1, 7))


@dataclass(frozen=True)
class Recipe:
    """Sonata's downstream recipe for one dataset (reference §8.1-8.4), as documented defaults.

    ``epochs``/``eval_epochs`` are Pointcept's: ``epochs // eval_epochs`` passes per evaluation
    epoch (its ``loop``). The GEM paper trains ScanNet for 100 epochs of one pass each instead.
    """

    grid_size: float = 0.02
    point_max: int = 102400                   # train SphereCrop
    crop_sample_rate: float | None = None     # an extra SphereCrop(sample_rate) before point_max (S3DIS 0.6)
    test_prevoxel: float | None = None        # test-time pre-voxelisation (1 cm for S3DIS, ScanNet++)
    epochs: int = 800
    eval_epochs: int = 100
    batch_size: int = 24                      # total over all GPUs (8 x 3 in Sonata's configs)
    mix_prob: float = 0.8

    @property
    def loop(self) -> int:
        return max(self.epochs // self.eval_epochs, 1)


@dataclass(frozen=True)
class DatasetKind:
    """How one dataset lies on disk and what its labels mean."""

    name: str
    classes: tuple[str, ...]
    label_file: str = "segment.npy"
    label_column: int | None = None           # (N, k) label files: which column (ScanNet++: 0)
    train_split: tuple[str, ...] = ("train",)
    val_split: tuple[str, ...] = ("val",)
    test_split: tuple[str, ...] = ("val",)    # where the final (voting) test runs
    splits: tuple[str, ...] = ("train", "val")             # split folders `data check` expects
    optional_splits: tuple[str, ...] = ()                  # folders reported when present
    unlabelled_splits: tuple[str, ...] = ()                # no label file there (ScanNet test)
    split_aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    require_normal: bool = True               # Sonata's 9 input channels: coord, color, normal
    normal_hint: str = "re-run the preprocessing so that every scene has normal.npy"
    root_variable: str | None = None          # the environment variable suites use for the root
    recipe: Recipe = field(default_factory=Recipe)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def resolve_split(self, split: str) -> list[str]:
        """Split folders of a suite's ``train_split``/``val_split``: an alias of this kind
        (S3DIS ``train`` = Areas 1,2,3,4,6), or comma-separated folder names."""
        if split in self.split_aliases:
            return list(self.split_aliases[split])
        names = [s.strip() for s in str(split).split(",") if s.strip()]
        if not names:
            raise PeftbenchError(f"dataset {self.name}: empty split {split!r}; name at least one split folder")
        return names


DATASET_KINDS: dict[str, DatasetKind] = {
    "synthetic": DatasetKind(
        "synthetic", SYNTHETIC_CLASSES, require_normal=False,
        recipe=Recipe(epochs=1, eval_epochs=1, batch_size=2, mix_prob=0.0)),
    "scannet": DatasetKind(
        "scannet", SCANNET20_CLASSES, label_file="segment20.npy", optional_splits=("test",),
        unlabelled_splits=("test",), root_variable="SCANNET_ROOT"),
    "scannet200": DatasetKind(
        "scannet200", SCANNET200_CLASSES, label_file="segment200.npy", optional_splits=("test",),
        unlabelled_splits=("test",), root_variable="SCANNET_ROOT"),
    "scannetpp": DatasetKind(
        "scannetpp", SCANNETPP_CLASSES, label_file="segment.npy", label_column=0,
        train_split=("train_grid1mm_chunk6x6_stride3x3",),
        splits=("train_grid1mm_chunk6x6_stride3x3", "val"), optional_splits=("train", "test"),
        unlabelled_splits=("test",), root_variable="SCANNETPP_ROOT",
        recipe=Recipe(point_max=204800, test_prevoxel=0.01)),
    "s3dis": DatasetKind(
        "s3dis", S3DIS_CLASSES, label_file="segment.npy",
        train_split=("Area_1", "Area_2", "Area_3", "Area_4", "Area_6"), val_split=("Area_5",),
        test_split=("Area_5",), splits=S3DIS_AREAS,
        split_aliases={"train": ("Area_1", "Area_2", "Area_3", "Area_4", "Area_6"), "val": ("Area_5",),
                       "test": ("Area_5",)},
        normal_hint="Sonata needs 9 input channels (coord, color, normal): preprocess S3DIS with "
                    "--parse_normal (needs the 2D-3D-S meshes)",
        root_variable="S3DIS_ROOT",
        recipe=Recipe(point_max=204800, crop_sample_rate=0.6, test_prevoxel=0.01, epochs=3000)),
}


def dataset_kind(name: str) -> DatasetKind:
    if name not in DATASET_KINDS:
        raise PeftbenchError(f"unknown dataset {name!r}; available: {', '.join(DATASET_KINDS)}")
    return DATASET_KINDS[name]


def six_fold_splits(areas: tuple[str, ...] = S3DIS_AREAS) -> list[dict[str, str]]:
    """S3DIS 6-fold cross-validation as six (train_split, val_split) pairs: each holds out one area."""
    return [{"train_split": ",".join(a for a in areas if a != held), "val_split": held} for held in areas]


def recipe_train_settings(name: str) -> dict:
    """The kind's recipe as ``TrainConfig`` keys (Pointcept's epochs; one GPU takes the total batch)."""
    recipe = dataset_kind(name).recipe
    return {"grid_size": recipe.grid_size, "point_max": recipe.point_max, "batch_size": recipe.batch_size,
            "mix_prob": recipe.mix_prob, "epochs": recipe.epochs}


__all__ = [
    "DATASET_KINDS", "DatasetKind", "Recipe", "S3DIS_AREAS", "S3DIS_CLASSES", "SCANNET200_CLASSES",
    "SCANNET20_CLASSES", "SCANNETPP_CLASSES", "dataset_kind", "recipe_train_settings", "six_fold_splits",
]
