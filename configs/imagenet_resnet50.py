"""ResNet-50 (He et al. 2015) on ImageNet-1k (or a subset) through the Grain loader, for a TPU.

Schedule: He et al. 2015 ("Deep Residual Learning for Image Recognition", Sec. 3.4: SGD,
momentum 0.9, weight decay 1e-4, batch 256 at lr 0.1 divided by 10 at plateaus) with the
linear scaling rule and 5-epoch linear warm-up of Goyal et al. 2017 ("Accurate, Large
Minibatch SGD: Training ImageNet in 1 Hour", Sec. 2.1-2.2, Table 2: 90 epochs, lr 0.1 x
batch / 256, divided by 10 at epochs 30, 60 and 80; 76.40% top-1 at batch 256, 76.26% at
8k). Batch 1024 (a TPU v2-8/v3-8 slice, 128 per core) -> lr 0.4. No label smoothing (as
those papers). bfloat16 compute on TPU (parameters stay float32), as the Flax ImageNet
example's ``half_precision``; float32 elsewhere. Augmentation: Inception random-resized
crop 224 (scale 0.08-1, ratio 3/4-4/3) and flip; evaluation: resize 256, center crop 224.

Data (``data.dir`` or TFDS): an image folder ``<dir>/{train,val}/<wnid>/*.JPEG`` (also an
ImageNet subset such as ImageNet-100: set ``data.name`` to a registry entry with its class
count), or, without ``data.dir``, TFDS ``imagenet2012`` prepared in ArrayRecord format
(``tfds build imagenet2012 --file_format=array_record`` after the manual download).

Run::

  python -m cnn_jax.train --config configs/imagenet_resnet50.py --workdir runs/in1k_r50 \\
    --config.data.dir=/data/imagenet

Expected: about 76% top-1 on the 50,000 validation images after 90 epochs (Goyal et al.
2017, Table 2); not run in this repository (no accelerator or ImageNet copy here).
"""

from cnn_jax.config import base_config


def get_config():
  c = base_config()
  c.model.name = "resnet50"
  c.data.name = "imagenet2012"
  c.data.dir = ""  # '' = TFDS imagenet2012; else the image folder
  c.data.loader = "grain"
  c.data.augment = "inception"
  c.data.image_size = 224
  c.data.rrc_scale = (0.08, 1.0)
  c.data.rrc_ratio = (3 / 4, 4 / 3)
  c.data.eval_crop_fraction = 0.875  # 224 / 256
  c.data.num_workers = -1  # one per host CPU but one, at most 16
  c.batch_size = 1024
  c.eval_batch_size = 1000
  c.num_epochs = 90
  c.optim.name = "sgd"
  c.optim.lr = 0.1 * c.batch_size / 256
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "piecewise"
  c.optim.boundaries_epochs = (30, 60, 80)
  c.optim.decay_factor = 0.1
  c.optim.warmup_epochs = 5.0
  c.label_smoothing = 0.0
  c.dtype = "auto"  # bfloat16 on TPU, float32 elsewhere (cnn_jax.config.resolve_dtype)
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000  # ~0.8 epoch at batch 1024: a preempted TPU loses little
  c.keep_checkpoints = 2
  return c

