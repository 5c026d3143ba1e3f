"""Networks of the method: the challenge baseline's PreResNet18, used for both teacher and student."""

# one module, one name: models.x and bkd.models.x would be two modules (and two sets of errors)
if __name__ != "bkd.models":
    raise ImportError(
        f"import bkd.models, not {__name__}: the repository's models/ folder is the package bkd.models (docs/layout.md)"
    )

from bkd.models.resnet import PreActBlock, PreResNet18, ResNet

__all__ = ["PreActBlock", "PreResNet18", "ResNet"]
