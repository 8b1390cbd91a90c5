"""ConvNeXt V2-Tiny (Woo et al. 2023) on ImageNet-1k (or a subset), supervised from scratch,
through the Grain loader, for a TPU.

Schedule: the ConvNeXt ImageNet-1k recipe (Liu et al. 2022, "A ConvNet for the 2020s",
Appendix A.1, Table 5), which ConvNeXt V2's supervised baselines use (Woo et al. 2023,
Appendix A, "ImageNet-1K supervised training setting"): 300 epochs, AdamW (beta 0.9, 0.999),
lr 4e-3 at batch 4096 with 20 warm-up epochs and cosine decay, weight decay 0.05, label
smoothing 0.1, stochastic depth 0.1 for T. Batch 1024 (a TPU v3-8 slice) -> lr 1e-3
(linear scaling from 4096). Not implemented here and left out: RandAugment (9, 0.5), Mixup
0.8, CutMix 1.0, random erasing 0.25 and the weight EMA are the rest of that recipe; expect
a lower top-1 without them. bfloat16 compute on TPU, float32 elsewhere. Augmentation:
Inception random-resized crop 224 (0.08-1, 3/4-4/3) and flip; evaluation resize 256 (crop
fraction 0.875, timm's crop_pct for ConvNeXt), center crop 224.

Data: as configs/imagenet_resnet50.py (``--config.data.dir`` image folder, or TFDS
``imagenet2012`` in ArrayRecord format).

Run::

  python -m cnn_jax.train --config configs/imagenet_convnextv2_tiny.py \\
    --workdir runs/in1k_cnv2_t --config.data.dir=/data/imagenet

Expected: ConvNeXt V2-T reaches 83.0% top-1 with FCMAE pre-training then fine-tuning (Woo et
al. 2023, Table 4 / README); the supervised ConvNeXt-T of this recipe 82.1% (Liu et al. 2022,
Table 1), with the full augmentation above. Not run in this repository.
"""

from cnn_jax.config import base_config


def get_config():
  c = base_config()
  c.model.name = "convnextv2_tiny"
  c.model.kwargs.drop_path_rate = 0.1
  c.data.name = "imagenet2012"
  c.data.dir = ""
  c.data.loader = "grain"
  c.data.augment = "inception"
  c.data.image_size = 224
  c.data.rrc_scale = (0.08, 1.0)
  c.data.rrc_ratio = (3 / 4, 4 / 3)
  c.data.eval_crop_fraction = 0.875
  c.data.num_workers = -1
  c.batch_size = 1024
  c.eval_batch_size = 1000
  c.num_epochs = 300
  c.optim.name = "adamw"
  c.optim.lr = 4e-3 * c.batch_size / 4096
  c.optim.b1, c.optim.b2 = 0.9, 0.999
  c.optim.weight_decay = 0.05
  c.optim.schedule = "cosine"
  c.optim.warmup_epochs = 20.0
  c.label_smoothing = 0.1
  c.dtype = "auto"  # bfloat16 on TPU, float32 elsewhere (cnn_jax.config.resolve_dtype)
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  return c
