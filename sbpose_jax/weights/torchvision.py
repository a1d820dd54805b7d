"""torchvision's ImageNet ResNet files: their names and where the configs expect them (JAX-free).

The backbone initialisation of every MMPose 0.x seed config. Users download the files once;
nothing is fetched at run time.
"""
from __future__ import annotations

TORCHVISION_URL = "https://download.pytorch.org/models/"
# ImageNet V1 weights: the original file names and the re-hosted ones of torchvision >= 0.13.
TORCHVISION_FILES = {18: ("resnet18-5c106cde.pth", "resnet18-f37072fd.pth"),
                     34: ("resnet34-333f7ec4.pth", "resnet34-b627a593.pth"),
                     50: ("resnet50-19c8e357.pth", "resnet50-0676ba61.pth"),
                     101: ("resnet101-5d3b4d8f.pth", "resnet101-63fe2227.pth"),
                     152: ("resnet152-b121ed2d.pth", "resnet152-394f9c45.pth")}
PRETRAINED_DIR = "pretrained"


def torchvision_path(depth: int) -> str:
  """Where the configs expect the ResNet-`depth` ImageNet weights: pretrained/<original name>."""
  return f"{PRETRAINED_DIR}/{TORCHVISION_FILES[depth][0]}"


def missing_init_message(path: str, depth: int) -> str:
  names = TORCHVISION_FILES.get(depth)
  where = (f"download the torchvision ImageNet ResNet-{depth} weights, e.g. "
           f"{TORCHVISION_URL}{names[0]} (or the re-hosted {TORCHVISION_URL}{names[1]}), "
           f"and place the file at {path}, or pass --config.init_checkpoint=/path/to/file"
           if names else "pass --config.init_checkpoint=/path/to/a/torchvision/resnet.pth")
  return (f"init_checkpoint {path} not found: {where}. Nothing is downloaded at run time; "
          "--config.init_checkpoint='' trains from a random init.")
