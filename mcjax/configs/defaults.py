"""Defaults shared by every config: the paper's CIFAR protocol (appendix E.1).

Each data set's config imports this and overrides what differs. Every field can
be overridden on the command line, e.g.::

    python -m mcjax.main --config configs/cifar100.py --workdir runs/c100 \
        --config.model.arch=29,64,8 --config.model.fan_in=1 --config.model.connectivity=random
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    config.model.arch = "20,4,8"  # 'D,w,C' or 'resnext{50,101}_{C}x{w}d'
    config.model.stem = ""  # '' = the architecture's own; 'cifar_maxpool' for Mini-ImageNet
    config.model.connectivity = "learned"  # learned | full | random | real
    config.model.fan_in = 4  # K, 1 <= K <= C
    # "sum" is the paper's Eq. 2, but it grows the identity path up to K-fold per module:
    # at the paper's learning rate 0.1 our runs diverge in the first steps (digits: loss
    # 267 at step 20, then chance). "mean" divides by K and trains; see docs/training.md.
    config.model.aggregation = "mean"  # mean | sum (the paper)
    config.model.branch_impl = "auto"  # auto | loop | grouped | vmap
    config.model.mask_init = 0.5
    # Start the last BN scale of each residual at 0 (as flax's ImageNet ResNet): off. In the
    # masked modes it makes every block of a module start identical, which starves
    # connectivity learning (digits, learned K=4: 94.4% with it, 97.8% without). It was on
    # for "full" ("auto") while "full" summed C per-branch BNs into one stream; with ResNeXt's
    # one BN after the sum it hurts (digits full, 8 epochs: 93.1% with, 95.8% without).
    # "auto" (on for "full" only) is still accepted.
    config.model.zero_init_residual = False  # False | True | "auto"
    # "full" only: one BN per branch after its last 1x1 conv, so that "full" has the masked
    # modes' parameters (the paper's Params-Train) instead of ResNeXt's one BN after the sum.
    config.model.full_per_branch_bn = False
    config.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)

    config.data = ml_collections.ConfigDict()
    config.data.name = "cifar100"  # digits | cifar10 | cifar100 | mini_imagenet | imagenet
    config.data.data_dir = ""  # tfds data_dir, or the image folder for mini_imagenet
    config.data.image_size = 32  # network input height = width
    config.data.channels = 3
    config.data.num_classes = 100

    # Four phases (paper appendix E): masks learned in phase 1, frozen afterwards.
    config.phase_epochs = (120, 100, 50, 50)
    config.weight_learning_rates = (0.1, 0.1, 0.01, 0.001)
    config.mask_learning_rate = 0.2
    config.batch_size = 128
    config.eval_batch_size = 500
    config.momentum = 0.9
    config.weight_decay = 5e-4
    config.decay_norm_and_bias = True  # decay BN scale/bias too, as the ResNeXt reference

    config.log_every_steps = 100
    config.eval_every_epochs = 10.0
    config.checkpoint_every_steps = 2000
    config.keep_checkpoints = 2
    # Tests only: make the loss NaN at this step (-1: never), to exercise the non-finite
    # guard (the run stops naming the step and phase; exit status 3 from mcjax.main).
    config.debug_inject_nan_at_step = -1
    return config
