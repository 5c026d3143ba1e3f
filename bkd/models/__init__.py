"""Networks of the method: the challenge baseline's PreResNet18, used for both teacher and student."""
from bkd.models.preact_resnet import PreActBlock, PreActResNet, PreResNet18

__all__ = ["PreActBlock", "PreActResNet", "PreResNet18"]
