"""Shared pieces of the dataset configs (hidden from the config list by the leading underscore)."""

# torchvision ImageNet-1k V1 ResNets, the backbone init of every MMPose 0.x seed config
# (reference-conventions §7.1). Users download them once; nothing is fetched at run time.
TORCHVISION_FILES = {
    18: "resnet18-5c106cde.pth",
    34: "resnet34-333f7ec4.pth",
    50: "resnet50-19c8e357.pth",
    101: "resnet101-5d3b4d8f.pth",
    152: "resnet152-b121ed2d.pth",
}
PRETRAINED_DIR = "pretrained"


def set_depth(c, depth: int):
  """ResNet depth plus the matching torchvision init file under pretrained/."""
  c.model.depth = depth
  c.init_checkpoint = f"{PRETRAINED_DIR}/{TORCHVISION_FILES[depth]}"
  return c


def set_input_size(c, width: int, height: int, sigma: float):
  """Input (W, H), heatmap at 1/4 and the Gaussian sigma (2 at 256x192, 3 at 384x288)."""
  c.data.input_size = (width, height)
  c.data.heatmap_size = (width // 4, height // 4)
  c.data.sigma = float(sigma)
  return c
