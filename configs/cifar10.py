"""CIFAR-10, the paper's Table 3 protocol (320 epochs in four phases).

Run::

    python -m mcjax.main --config configs/cifar10.py --workdir runs/cifar10 \
        --config.data.data_dir=~/tensorflow_datasets --config.model.arch=29,8,8

The data must be prepared once (needs TensorFlow and the network, elsewhere):
``tfds build cifar10 --file_format=array_record --data_dir DIR``.
Expected (paper, Table 3, best of 4): ``29,8,8`` learned K=4 95.1%, full 93.3%.
"""

from mcjax.configs import defaults


def get_config():
    config = defaults.get_config()
    config.data.name = "cifar10"
    config.data.num_classes = 10
    config.model.arch = "29,8,8"
    return config
