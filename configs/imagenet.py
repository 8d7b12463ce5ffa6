"""ImageNet (ILSVRC 2012), the paper's Table 2 protocol (120 epochs in four phases).

Run::

    python -m mcjax.main --config configs/imagenet.py --workdir runs/imagenet \
        --config.data.data_dir=~/tensorflow_datasets --config.model.arch=resnext50_32x4d

``imagenet2012`` needs a manual download and ``tfds build imagenet2012
--file_format=array_record`` once. K = C / 2 as in the paper.
Expected (paper, Table 2): resnext50_32x4d learned K=16 79.1% top-1 / 94.1% top-5.
"""

from mcjax.configs import defaults


def get_config():
    config = defaults.get_config()
    config.data.name = "imagenet"
    config.data.num_classes = 1000
    config.data.image_size = 224
    config.model.arch = "resnext50_32x4d"
    config.model.fan_in = 16
    config.phase_epochs = (30, 30, 30, 30)
    config.weight_learning_rates = (0.1, 0.1, 0.01, 0.001)
    config.batch_size = 256
    config.eval_batch_size = 400  # 50,000 validation images in 125 batches; divides over 8 or 16
    config.weight_decay = 1e-4
    return config
