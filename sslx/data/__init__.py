"""tf.data input layer: data sets by name, batched SimCLR augmentation, per-process numpy iterators."""
from sslx.data.augment import (AugmentSpec, augment_batch, augment_views, cifar_spec, eval_preprocess,
                               identity_spec, imagenet_spec, spec_from_config)
from sslx.data.pipeline import (START, InputStream, Position, crop_flip_spec, eval_iterator,
                                indexed_iterator, pretrain_iterator, supervised_iterator)
from sslx.data.sources import Source, SplitInfo, class_names, describe, labels_and_ids, load_split

__all__ = [
    "AugmentSpec", "augment_batch", "augment_views", "cifar_spec", "eval_preprocess", "identity_spec",
    "imagenet_spec", "spec_from_config", "START", "InputStream", "Position", "crop_flip_spec", "indexed_iterator",
    "eval_iterator", "pretrain_iterator", "supervised_iterator",
    "Source", "SplitInfo", "class_names", "describe", "labels_and_ids", "load_split",
]
