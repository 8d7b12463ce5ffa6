"""Mini-ImageNet (100 classes, 500 train / 100 test per class), Table 4 protocol.

Run::

    python -m mcjax.main --config configs/mini_imagenet.py --workdir runs/mini \
        --config.data.data_dir=/data/mini_imagenet --config.model.arch=29,8,8

``data_dir`` is a folder of 100 class subfolders of images (600 each); images
are resized to 84x84, split 500/100 per class by file name, and cropped to
64x64 (random + flip for training, centre for test). The stem adds a 3x3/2
max-pool (Table 6). Expected (paper, best of 4): ``29,8,8`` learned K=4 71.4%,
full 68.1%, random K=4 68.0%.
"""

from mcjax.configs import defaults


def get_config():
    config = defaults.get_config()
    config.data.name = "mini_imagenet"
    config.data.num_classes = 100
    config.data.image_size = 64  # the crop the network sees
    config.data.folder_image_size = 84  # images are resized to this first
    config.data.train_per_class = 500
    config.data.test_per_class = 100
    config.model.arch = "29,8,8"
    config.model.stem = "cifar_maxpool"
    config.batch_size = 256
    return config
