"""Data: Pointcept-layout reader, synthetic scenes, Sonata transforms and point-batch collate."""

from peftbench.data.collate import collate_points, concat_batches, mix3d_collate, split_batch
from peftbench.data.layout import SceneFolderDataset
from peftbench.data.synthetic import (
    DOMAINS,
    SYNTHETIC_CLASSES,
    DomainStyle,
    generate_scene,
    get_domain,
    write_synthetic_dataset,
)
from peftbench.data.transforms import (
    CenterShift,
    ChromaticAutoContrast,
    ChromaticJitter,
    ChromaticTranslation,
    Collect,
    Compose,
    Copy,
    ElasticDistortion,
    GridSample,
    NormalizeColor,
    RandomDropout,
    RandomFlip,
    RandomJitter,
    RandomRotate,
    RandomScale,
    SphereCrop,
    ToTensor,
    sonata_train_transform,
    sonata_val_transform,
)

__all__ = [
    "DOMAINS", "SYNTHETIC_CLASSES", "DomainStyle", "generate_scene", "get_domain", "write_synthetic_dataset",
    "SceneFolderDataset", "collate_points", "concat_batches", "mix3d_collate", "split_batch",
    "CenterShift", "ChromaticAutoContrast", "ChromaticJitter", "ChromaticTranslation", "Collect", "Compose",
    "Copy", "ElasticDistortion", "GridSample", "NormalizeColor", "RandomDropout", "RandomFlip", "RandomJitter",
    "RandomRotate", "RandomScale", "SphereCrop", "ToTensor", "sonata_train_transform", "sonata_val_transform",
]
