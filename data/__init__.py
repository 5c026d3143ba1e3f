"""CIFAR images, CIFAR-N label files, splits and augmentation.

The default CIFAR-N label paths (as in the original) are files in this folder:
data/CIFAR-10_human.pt and data/CIFAR-100_human.pt (git-ignored, never committed).
"""
