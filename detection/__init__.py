"""Detection, instance segmentation and keypoints on a pruned ResNet-50 (see detection/README.md)."""
