"""skymosaic.plan: classic-mode clustering of frames by sky position."""

from .cluster import Clustering, candidate_pairs, cluster_frames, pair_overlaps

__all__ = ["Clustering", "candidate_pairs", "cluster_frames", "pair_overlaps"]
