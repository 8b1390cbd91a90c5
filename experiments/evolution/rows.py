"""Table 1's static data: per model the registry name, paper, year, published depth, and the
published ImageNet top-1 and parameter counts, each with its source.

Nothing here is measured; :mod:`experiments.evolution.run` measures, and
:mod:`experiments.evolution.report` joins the two. Sources are keyed in :data:`SOURCES` and
cited as ``[key, locator]`` in the table. A figure the sources do not give is ``None`` and
printed as '-' with the reason in its source field.

Conventions:

* ``year``: year of the first public version of the paper (arXiv where there is one).
* ``depth``: the depth figure the paper itself states or tabulates: weight layers for the
  CNNs up to DenseNet, blocks (as "N blocks") for the block-structured models after it,
  whose papers give block counts rather than a layer count.
* ``top1``: the paper's ImageNet-1k (ILSVRC-2012) validation top-1 (%) for this model when
  the paper gives one; else the torchvision model card's, whose implementation the
  registry model follows. ``top1_protocol`` says how it was evaluated (crops, scale).
* ``params_paper``: as the paper prints it (usually rounded to millions);
  ``params_torchvision``: the exact ``num_params`` of torchvision's model card, for the
  models whose registry layout is torchvision's (the registry tests match these counts).
"""

from __future__ import annotations

import dataclasses

SOURCES = {
    "lecun1998": "Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, \"Gradient-Based Learning "
                 "Applied to Document Recognition\", Proc. IEEE 86(11), 1998",
    "krizhevsky2012": "A. Krizhevsky, I. Sutskever, G. E. Hinton, \"ImageNet Classification "
                      "with Deep Convolutional Neural Networks\", NeurIPS 2012",
    "simonyan2014": "K. Simonyan, A. Zisserman, \"Very Deep Convolutional Networks for "
                    "Large-Scale Image Recognition\", ICLR 2015, arXiv:1409.1556",
    "szegedy2014": "C. Szegedy et al., \"Going Deeper with Convolutions\", CVPR 2015, "
                   "arXiv:1409.4842",
    "he2015": "K. He, X. Zhang, S. Ren, J. Sun, \"Deep Residual Learning for Image "
              "Recognition\", CVPR 2016, arXiv:1512.03385",
    "huang2016": "G. Huang, Z. Liu, L. van der Maaten, K. Q. Weinberger, \"Densely Connected "
                 "Convolutional Networks\", CVPR 2017, arXiv:1608.06993",
    "sandler2018": "M. Sandler, A. Howard, M. Zhu, A. Zhmoginov, L.-C. Chen, \"MobileNetV2: "
                   "Inverted Residuals and Linear Bottlenecks\", CVPR 2018, arXiv:1801.04381",
    "tan2019": "M. Tan, Q. V. Le, \"EfficientNet: Rethinking Model Scaling for Convolutional "
               "Neural Networks\", ICML 2019, arXiv:1905.11946",
    "liu2022": "Z. Liu, H. Mao, C.-Y. Wu, C. Feichtenhofer, T. Darrell, S. Xie, \"A ConvNet "
               "for the 2020s\", CVPR 2022, arXiv:2201.03545",
    "woo2023": "S. Woo et al., \"ConvNeXt V2: Co-designing and Scaling ConvNets with Masked "
               "Autoencoders\", CVPR 2023, arXiv:2301.00808; its code release "
               "github.com/facebookresearch/ConvNeXt-V2, README table \"ImageNet-1K "
               "fine-tuned models\"",
    "dosovitskiy2020": "A. Dosovitskiy et al., \"An Image is Worth 16x16 Words: Transformers "
                       "for Image Recognition at Scale\", ICLR 2021, arXiv:2010.11929",
    "touvron2020": "H. Touvron et al., \"Training data-efficient image transformers & "
                   "distillation through attention\" (DeiT), ICML 2021, arXiv:2012.12877",
    "tolstikhin2021": "I. Tolstikhin et al., \"MLP-Mixer: An all-MLP Architecture for "
                      "Vision\", NeurIPS 2021, arXiv:2105.01601",
    "tv": "torchvision model documentation (pytorch.org/vision/stable/models), the model's "
          "IMAGENET1K_V1 weights: \"acc@1 (on ImageNet-1K)\" (one 224x224 center crop of the "
          "image resized to 256) and \"num_params\"",
}

# LeNet-5's trainable parameters per layer as the paper states them (LeCun et al. 1998,
# Sec. II-B). S2/S4 are trainable subsampling layers (a coefficient and a bias per map);
# C3 connects each of its 16 maps to a subset of S2's 6 maps (Table I); the RBF output
# layer's 84 x 10 parameters are fixed by hand, not trained, so the paper counts none.
LENET5_PAPER_LAYER_PARAMS = {"C1": 156, "S2": 12, "C3": 1516, "S4": 32, "C5": 48120,
                             "F6": 10164}


def lenet5_dense_params(num_classes: int = 10) -> int:
  """Parameters of the modern dense LeNet-5 (the registry's ``lenet5``), derived from the
  paper's per-layer counts :data:`LENET5_PAPER_LAYER_PARAMS` and nothing else.

  The dense form changes three things (``cnn_jax/models/lenet.py``): max-pooling instead
  of the trainable S2/S4 (0 parameters instead of 12 and 32), full C3 connectivity
  (``16 * (6 * 5 * 5 + 1) = 2,416`` instead of 1,516), and a trained linear output layer
  ``84 -> num_classes`` with biases instead of the fixed RBF layer. C1, C5 and F6 are as
  printed in the paper.

  Returns:
    The exact count, 61,706 for 10 classes.
  """
  p = LENET5_PAPER_LAYER_PARAMS
  c3_full = 16 * (6 * 5 * 5 + 1)
  return p["C1"] + c3_full + p["C5"] + p["F6"] + 84 * num_classes + num_classes


@dataclasses.dataclass(frozen=True)
class Row:
  """One model of Table 1 (see the module docstring for the conventions).

  Attributes:
    name: registry name (``cnn_jax.models.create``).
    display: name in the table, e.g. ``'ResNet-50'``.
    year: year of the paper's first public version.
    paper: key into :data:`SOURCES`.
    input_shape: ``(H, W, C)`` in pixels and channels, the model's native input.
    num_classes: classifier outputs.
    depth: published depth, text ('50', '17 blocks').
    depth_source: ``'key, locator'`` of ``depth``.
    top1: published ImageNet-1k val top-1 in %, or None.
    top1_protocol: how ``top1`` was evaluated, or why there is none.
    top1_source: ``'key, locator'`` of ``top1`` ('' when None).
    single_view: True when ``top1`` is from one view of the image (one crop, or the whole
      image at one scale); False for multi-crop / dense multi-view protocols.
    params_paper: the paper's parameter count as printed ('60M'), or '-'.
    params_paper_source: ``'key, locator'`` of it, or why there is none.
    params_torchvision: exact ``num_params`` of torchvision's model card, or None.
    params_expected: the exact count the registry model must have by an independent
      source (torchvision's card, or a derivation from the paper for LeNet-5), or None.
  """
  name: str
  display: str
  year: int
  paper: str
  input_shape: tuple[int, int, int]
  num_classes: int
  depth: str
  depth_source: str
  top1: float | None
  top1_protocol: str
  top1_source: str
  single_view: bool
  params_paper: str
  params_paper_source: str
  params_torchvision: int | None = None
  params_expected: int | None = None


_IMAGENET = dict(input_shape=(224, 224, 3), num_classes=1000)

ROWS: tuple[Row, ...] = (
    Row("lenet5", "LeNet-5", 1998, "lecun1998", input_shape=(32, 32, 1), num_classes=10,
        depth="7", depth_source="lecun1998, Sec. II-B: 7 layers not counting the input",
        top1=None, top1_protocol="not applicable: a 32x32 digit (MNIST) model",
        top1_source="", single_view=True,
        params_paper="60,000",
        params_paper_source="lecun1998, Sec. II-B: sum of the per-layer trainable counts",
        params_expected=lenet5_dense_params(10)),
    Row("alexnet", "AlexNet", 2012, "krizhevsky2012", **_IMAGENET,
        depth="8", depth_source="krizhevsky2012, Sec. 3.5: eight layers with weights",
        top1=59.3, top1_protocol="10 crops (5 patches + mirrors), 1 CNN",
        top1_source="krizhevsky2012, Table 2 (40.7% top-1 error)", single_view=False,
        params_paper="60M", params_paper_source="krizhevsky2012, abstract",
        params_torchvision=61_100_840, params_expected=61_100_840),
    Row("vgg16", "VGG-16", 2014, "simonyan2014", **_IMAGENET,
        depth="16", depth_source="simonyan2014, Table 1, config. D: 16 weight layers",
        top1=73.0, top1_protocol="dense (fully convolutional) at one scale, train S=256, "
                                 "test Q=256",
        top1_source="simonyan2014, Table 3, D (27.0% top-1 error)", single_view=True,
        params_paper="138M", params_paper_source="simonyan2014, Table 2",
        params_torchvision=138_357_544, params_expected=138_357_544),
    Row("googlenet", "GoogLeNet", 2014, "szegedy2014", **_IMAGENET,
        depth="22", depth_source="szegedy2014, Sec. 5: 22 layers with parameters "
                                 "(27 with pooling)",
        top1=69.778, top1_protocol="1 center crop 224 (torchvision weights; the paper "
                                   "reports top-5 only)",
        top1_source="tv, GoogLeNet_Weights.IMAGENET1K_V1", single_view=True,
        params_paper="-", params_paper_source="szegedy2014: no total given",
        params_torchvision=6_624_904, params_expected=6_624_904),
    Row("resnet50", "ResNet-50", 2015, "he2015", **_IMAGENET,
        depth="50", depth_source="he2015, Table 1",
        top1=77.15, top1_protocol="10 crops", top1_source="he2015, Table 3 (22.85% top-1 "
                                                          "error)",
        single_view=False,
        params_paper="-", params_paper_source="he2015: not given (Table 1 gives FLOPs)",
        params_torchvision=25_557_032, params_expected=25_557_032),
    Row("densenet121", "DenseNet-121", 2016, "huang2016", **_IMAGENET,
        depth="121", depth_source="huang2016, Table 1",
        top1=74.98, top1_protocol="1 crop 224",
        top1_source="huang2016, Table 3 (25.02% single-crop top-1 error; 10 crops 23.61%)",
        single_view=True,
        params_paper="-", params_paper_source="huang2016: not tabulated for ImageNet models",
        params_torchvision=7_978_856, params_expected=7_978_856),
    Row("mobilenet_v2", "MobileNetV2", 2018, "sandler2018", **_IMAGENET,
        depth="17 blocks", depth_source="sandler2018, Table 2: 1 conv, 17 bottleneck "
                                        "blocks (sum of n), 2 convs",
        top1=72.0, top1_protocol="224, 1 crop", top1_source="sandler2018, Table 4",
        single_view=True,
        params_paper="3.4M", params_paper_source="sandler2018, Table 4",
        params_torchvision=3_504_872, params_expected=3_504_872),
    Row("efficientnet_b0", "EfficientNet-B0", 2019, "tan2019", **_IMAGENET,
        depth="16 blocks", depth_source="tan2019, Table 1: 16 MBConv blocks (stages 2-8)",
        top1=77.1, top1_protocol="224, 1 crop", top1_source="tan2019, Table 2",
        single_view=True,
        params_paper="5.3M", params_paper_source="tan2019, Table 2",
        params_torchvision=5_288_548, params_expected=5_288_548),
    Row("convnextv2_tiny", "ConvNeXt V2-T", 2023, "woo2023", **_IMAGENET,
        depth="18 blocks", depth_source="liu2022, ConvNeXt-T: B = (3, 3, 9, 3)",
        top1=83.0, top1_protocol="224, 1 crop; FCMAE pre-training then fine-tuning, "
                                 "ImageNet-1k only",
        top1_source="woo2023, README \"ImageNet-1K fine-tuned models\"", single_view=True,
        params_paper="28.6M",
        params_paper_source="woo2023, README \"ImageNet-1K fine-tuned models\""),
    Row("vit_tiny_patch16_224", "ViT-Ti/16", 2020, "dosovitskiy2020", **_IMAGENET,
        depth="12 blocks", depth_source="touvron2020, Table 1 (DeiT-Ti = ViT-Ti/16)",
        top1=72.2, top1_protocol="224, 1 crop; DeiT-Ti (ImageNet-1k only, no "
                                 "distillation)",
        top1_source="touvron2020, Table 5", single_view=True,
        params_paper="5M", params_paper_source="touvron2020, Table 1"),
    Row("mixer_b16_224", "Mixer-B/16", 2021, "tolstikhin2021", **_IMAGENET,
        depth="12 blocks", depth_source="tolstikhin2021, Table 1",
        top1=76.4, top1_protocol="224; ImageNet-1k from scratch, extra regularization",
        top1_source="tolstikhin2021, Sec. 3.1 and Table 2", single_view=True,
        params_paper="59M", params_paper_source="tolstikhin2021, Table 1"),
)

BY_NAME = {r.name: r for r in ROWS}


def row(name: str) -> Row:
  """The :class:`Row` of registry name ``name``.

  Raises:
    KeyError: ``name`` is not in Table 1 (the message lists the names that are).
  """
  try:
    return BY_NAME[name]
  except KeyError:
    raise KeyError(f"{name!r} is not a Table 1 model; choose from {sorted(BY_NAME)}") from None
