"""Group window embeddings by speaker, estimating how many speakers there are when not told.

- `agglomerative`: average linkage on cosine distance (SciPy); the tree is cut at a distance
  threshold (tuned by measurement) or at the requested number of clusters.
- `spectral`: a cosine affinity, each row pruned to its nearest neighbours, a normalised
  Laplacian; the count is the largest eigengap, then k-means on the leading eigenvectors.

Both then drop tiny clusters when the count was estimated (a cough or a laugh makes no new
speaker) and reassign every window to its nearest centroid, which mends early merge mistakes.

Both need every pair of windows (memory and time grow with the square of the recording's
speech: about 8 GB for 10 hours). Past `MAX_CLUSTERED_ROWS` windows, an evenly spaced sample of
that many is clustered, and every window then goes to its nearest speaker (centroid), refined
over all of them: memory stays that of a half-hour recording, and the speakers are the same
ones throughout.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CLUSTER_METHODS = ("agglomerative", "spectral")
# Average-linkage cosine distance above which two groups are different speakers: chosen by
# scripts/bench_diarization.py on joined clips of known readers and the three-speaker recording.
DEFAULT_THRESHOLD = 0.395
# Windows clustered pairwise at most (0.8 s hop: about 27 minutes of speech); the pairwise
# distances then take 16 MB. A speaker heard for a minute still has ~70 windows in the sample.
MAX_CLUSTERED_ROWS = 2000


def cluster(
    embeddings: np.ndarray,
    *,
    method: str = "agglomerative",
    num_speakers: int | None = None,
    min_speakers: int = 1,
    max_speakers: int | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    min_cluster_size: int = 2,
    min_cluster_fraction: float = 0.05,
    max_min_cluster_size: int | None = None,
    max_rows: int | None = None,
) -> np.ndarray:
    """Cluster index per row of `embeddings` (L2-normalised), numbered 0.. by first appearance.

    When the count is estimated, clusters smaller than `min_cluster_size` rows, or than
    `min_cluster_fraction` of all rows (at most `max_min_cluster_size`), join their nearest one.
    More than `max_rows` rows (default MAX_CLUSTERED_ROWS): a sample of them is clustered, the
    rest join the nearest cluster.
    """
    n = len(embeddings)
    limit = MAX_CLUSTERED_ROWS if max_rows is None else max_rows
    if n > limit:
        return _cluster_sampled(
            embeddings,
            limit,
            method=method,
            num_speakers=num_speakers,
            min_speakers=min_speakers,
            max_speakers=max_speakers,
            threshold=threshold,
            min_cluster_size=min_cluster_size,
            min_cluster_fraction=min_cluster_fraction,
            max_min_cluster_size=max_min_cluster_size,
        )
    if n == 0:
        return np.zeros(0, dtype=int)
    upper = min(n, max_speakers if max_speakers is not None else n)
    lower = min(max(1, min_speakers), upper)
    if num_speakers is not None:
        lower = upper = min(num_speakers, n)
    if n == 1 or upper == 1:
        return np.zeros(n, dtype=int)
    if method == "agglomerative":
        labels = _agglomerative(embeddings, lower, upper, threshold)
    elif method == "spectral":
        labels = _spectral(embeddings, lower, upper)
    else:
        raise ValueError(f"Unknown clustering {method!r}; use one of {', '.join(CLUSTER_METHODS)}.")
    estimated = num_speakers is None
    if estimated:
        by_share = int(np.ceil(min_cluster_fraction * n))
        if max_min_cluster_size is not None:
            by_share = min(by_share, max_min_cluster_size)
        smallest = max(min_cluster_size, by_share)
        labels = _absorb_small(embeddings, labels, smallest, lower)
    labels = _refine(embeddings, labels)
    return _by_first_appearance(labels)


def _cluster_sampled(
    embeddings: np.ndarray,
    rows: int,
    *,
    min_cluster_size: int,
    min_cluster_fraction: float,
    max_min_cluster_size: int | None,
    min_speakers: int,
    num_speakers: int | None,
    **options: Any,
) -> np.ndarray:
    """Cluster an evenly spaced sample of `rows` rows, then give every row its nearest cluster.

    The small-speaker floor is scaled to the sample (a speaker with 10 s in two hours keeps the
    windows that make it one), then applied again, unscaled, to the whole recording."""
    n = len(embeddings)
    picked = np.unique(np.linspace(0, n - 1, rows).round().astype(int))
    share = len(picked) / n
    sample_labels = cluster(
        embeddings[picked],
        min_cluster_size=min_cluster_size,
        min_cluster_fraction=min_cluster_fraction,
        max_min_cluster_size=None
        if max_min_cluster_size is None
        else max(2, round(max_min_cluster_size * share)),
        min_speakers=min_speakers,
        num_speakers=num_speakers,
        max_rows=rows,
        **options,
    )
    ids, centres = _centroids(embeddings[picked], sample_labels)
    labels = ids[_nearest(embeddings, centres)]
    if num_speakers is None:
        by_share = int(np.ceil(min_cluster_fraction * n))
        if max_min_cluster_size is not None:
            by_share = min(by_share, max_min_cluster_size)
        upper = options.get("max_speakers")
        lower = min(max(1, min_speakers), upper if upper is not None else n)
        labels = _absorb_small(embeddings, labels, max(min_cluster_size, by_share), lower)
    return _by_first_appearance(_refine(embeddings, labels))


def _nearest(embeddings: np.ndarray, centres: np.ndarray, block: int = 65_536) -> np.ndarray:
    """Index of the closest centre (cosine) per row, a block of rows at a time."""
    out = np.empty(len(embeddings), dtype=int)
    for start in range(0, len(embeddings), block):
        out[start : start + block] = np.argmax(embeddings[start : start + block] @ centres.T, axis=1)
    return out


def _agglomerative(embeddings: np.ndarray, lower: int, upper: int, threshold: float) -> np.ndarray:
    from scipy.cluster.hierarchy import fcluster, linkage

    tree = linkage(embeddings.astype(np.float64), method="average", metric="cosine")
    labels = fcluster(tree, t=threshold, criterion="distance")
    count = len(set(labels.tolist()))
    if not lower <= count <= upper:
        labels = fcluster(tree, t=min(max(count, lower), upper), criterion="maxclust")
    return np.asarray(labels, dtype=int) - 1


def _spectral(embeddings: np.ndarray, lower: int, upper: int, keep: float = 0.3) -> np.ndarray:
    from scipy.cluster.vq import kmeans2

    n = len(embeddings)
    affinity = np.clip(embeddings @ embeddings.T, 0.0, 1.0)
    neighbours = max(2, int(np.ceil(keep * n)))
    pruned = np.zeros_like(affinity)
    for row in range(n):
        nearest = np.argsort(affinity[row])[-neighbours:]
        pruned[row, nearest] = affinity[row, nearest]
    pruned = (pruned + pruned.T) / 2
    np.fill_diagonal(pruned, 0.0)
    degree = pruned.sum(axis=1)
    scale = 1.0 / np.sqrt(np.maximum(degree, 1e-10))
    laplacian = np.eye(n) - scale[:, None] * pruned * scale[None, :]
    values, vectors = np.linalg.eigh(laplacian)
    gaps = np.diff(values[: upper + 1])
    count = lower + int(np.argmax(gaps[lower - 1 : upper])) if upper > lower else lower
    if count == 1:
        return np.zeros(n, dtype=int)
    features = vectors[:, :count]
    features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-10)
    _, labels = kmeans2(features, count, minit="++", seed=np.random.default_rng(0))
    return np.asarray(labels, dtype=int)


def _centroids(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.unique(labels)
    centres = np.stack([embeddings[labels == i].mean(axis=0) for i in ids])
    return ids, centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-10)


def _absorb_small(embeddings: np.ndarray, labels: np.ndarray, min_size: int, lower: int) -> np.ndarray:
    labels = labels.copy()
    while True:
        ids, counts = np.unique(labels, return_counts=True)
        if len(ids) <= max(1, lower) or counts.min() >= min_size:
            return labels
        smallest = ids[int(np.argmin(counts))]
        others = labels != smallest
        other_ids, centres = _centroids(embeddings[others], labels[others])
        members = labels == smallest
        labels[members] = other_ids[np.argmax(embeddings[members] @ centres.T, axis=1)]


def _refine(embeddings: np.ndarray, labels: np.ndarray, rounds: int = 3) -> np.ndarray:
    for _ in range(rounds):
        ids, centres = _centroids(embeddings, labels)
        if len(ids) < 2:
            return labels
        moved = ids[np.argmax(embeddings @ centres.T, axis=1)]
        if len(np.unique(moved)) < len(ids) or np.array_equal(moved, labels):
            return labels if len(np.unique(moved)) < len(ids) else moved
        labels = moved
    return labels


def _by_first_appearance(labels: np.ndarray) -> np.ndarray:
    order: dict[int, int] = {}
    for label in labels.tolist():
        order.setdefault(label, len(order))
    return np.array([order[label] for label in labels.tolist()], dtype=int)
