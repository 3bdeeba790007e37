"""Which ImageNet-1k labels a clip_benchmark class list stands for (DiT's label space).

A class-conditional DiT scores integer ImageNet labels, while clip_benchmark hands over class
*names*. The imagenet_robustness datasets use subsets of ImageNet (imagenet-a and imagenet-r:
200 classes; objectnet: 113 classes, each covering one or more ImageNet classes), and DiT must
classify over exactly the subset's labels. The mapping is read from the dataset's own structure
when it has one (folder WordNet ids of an ImageFolder, ObjectNet's ``folders_to_ids``), because
clip_benchmark's ImageNet names are not unique ("missile" and "sunglasses" appear twice); a
plain name list is aligned, in order, with clip_benchmark's ImageNet-1k names.
"""
from __future__ import annotations

import json
import logging
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)

__all__ = ["imagenet_labels_for_classes", "imagenet_classnames", "imagenet_wnids"]

_WNID = re.compile(r"^n\d{8}$")


@lru_cache(maxsize=1)
def imagenet_classnames() -> tuple[str, ...]:
    """clip_benchmark's English ImageNet-1k class names, in label order."""
    import clip_benchmark.datasets as cb_datasets

    path = Path(cb_datasets.__file__).parent / "en_classnames.json"
    return tuple(json.loads(path.read_text())["imagenet1k"])


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 WordNet ids in label order (as clip_benchmark's robustness subsets use them)."""
    from clip_benchmark.datasets.builder import all_imagenet_wordnet_ids

    return tuple(all_imagenet_wordnet_ids)


def _from_objectnet(dataset: Any, n: int) -> list[tuple[int, ...]] | None:
    folders_to_ids = getattr(dataset, "folders_to_ids", None)
    if not isinstance(folders_to_ids, dict) or len(folders_to_ids) != n:
        return None
    # ObjectNetDataset orders its classes (and targets) by sorted folder name.
    return [tuple(sorted(int(i) for i in folders_to_ids[folder])) for folder in sorted(folders_to_ids)]


def _from_wnid_folders(dataset: Any, n: int) -> list[tuple[int, ...]] | None:
    class_to_idx = getattr(dataset, "class_to_idx", None)
    if not isinstance(class_to_idx, dict) or len(class_to_idx) != n:
        return None
    if not all(isinstance(k, str) and _WNID.match(k) for k in class_to_idx):
        return None
    position = {w: i for i, w in enumerate(imagenet_wnids())}
    unknown = [w for w in class_to_idx if w not in position]
    if unknown:
        raise ValueError(f"Folders {unknown[:3]} are not ImageNet-1k WordNet ids; DiT cannot score them.")
    by_target = sorted(class_to_idx.items(), key=lambda kv: kv[1])
    return [(position[w],) for w, _ in by_target]


def _from_names(classnames: Sequence[str]) -> list[tuple[int, ...]] | None:
    names = imagenet_classnames()
    if tuple(classnames) == names:
        return [(i,) for i in range(len(names))]
    labels, start = [], 0
    for name in classnames:  # subsets keep ImageNet's label order: align greedily
        try:
            start = names.index(name, start)
        except ValueError:
            return None
        if names.count(name) > 1:
            logger.warning("Class name %r occurs twice among ImageNet's names; taking label %d by order.", name, start)
        labels.append((start,))
        start += 1
    return labels


def imagenet_labels_for_classes(classnames: Sequence[str], dataset: Any = None) -> list[tuple[int, ...]] | None:
    """ImageNet-1k labels of each class (several for ObjectNet classes), or ``None`` if not ImageNet.

    Args:
        classnames: the class names clip_benchmark evaluates, in target order.
        dataset: the dataset object, when available (its folder structure is preferred).
    """
    n = len(classnames)
    for source in (lambda: _from_objectnet(dataset, n), lambda: _from_wnid_folders(dataset, n)):
        labels = source() if dataset is not None else None
        if labels is not None:
            return labels
    return _from_names(list(classnames))
