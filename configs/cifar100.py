"""CIFAR-100, the paper's Table 1 protocol (320 epochs in four phases).

Run::

    python -m mcjax.main --config configs/cifar100.py --workdir runs/cifar100 \
        --config.data.data_dir=~/tensorflow_datasets --config.model.arch=29,8,8

The data must be prepared once (needs TensorFlow and the network, elsewhere):
``tfds build cifar100 --file_format=array_record --data_dir DIR``.
Expected (paper, Table 1, best of 4): ``29,8,8`` learned K=4 75.9% top-1,
full (ResNeXt) 73.5%; ``29,64,8`` learned K=4 84.1%.
"""

from mcjax.configs import defaults


def get_config():
    config = defaults.get_config()
    config.data.name = "cifar100"
    config.data.num_classes = 100
    config.model.arch = "29,8,8"
    return config
