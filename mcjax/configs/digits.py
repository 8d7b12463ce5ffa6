"""scikit-learn's digits (8x8 grayscale, 1,437 train / 360 test): the quick start.

Run (from any directory; ``configs/digits.py`` of the repository is this file)::

    python -m mcjax.main --workdir runs/digits

Expected on a 2-core CPU: about 3 minutes for all four phases; learned K=4 on a
20,4,8 network; test accuracy 96.4-97.8% over seeds 0, 1, 2 (the last bits of a run,
and so the exact figure, depend on the machine).
"""

from mcjax.configs import defaults


def get_config():
    config = defaults.get_config()
    config.data.name = "digits"
    config.data.image_size = 8
    config.data.channels = 1
    config.data.num_classes = 10
    config.model.arch = "20,4,8"
    config.batch_size = 64
    config.eval_batch_size = 256
    config.phase_epochs = (10, 5, 3, 2)
    config.weight_learning_rates = (0.1, 0.1, 0.01, 0.001)
    config.log_every_steps = 20
    config.eval_every_epochs = 5.0
    config.checkpoint_every_steps = 200
    return config
