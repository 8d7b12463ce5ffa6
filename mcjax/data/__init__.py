"""The data: readers of each data set, the table of data sets, and the training inputs.

A ladder; each rung imports only the rungs below it (``tests/project/test_layout.py``):

1. :mod:`~mcjax.data.types`: :class:`~mcjax.data.types.Dataset`, what the program knows
   about a data set, and :class:`~mcjax.data.types.Input`, the interface every training
   input serves;
2. the readers: :mod:`~mcjax.data.sources` (a data set's arrays held in memory, the
   embedded digits, tfds), :mod:`~mcjax.data.image_folder`, :mod:`~mcjax.data.decode`;
   and the inputs' helpers :mod:`~mcjax.data.augment` and :mod:`~mcjax.data.batch_order`;
3. :mod:`~mcjax.data.registry`: data-set names to their ``Dataset`` and reader;
4. the inputs: :mod:`~mcjax.data.in_memory` (a data set on the device whole: digits,
   CIFAR, image folders), :mod:`~mcjax.data.streaming` (ImageNet through host threads),
   and :mod:`~mcjax.data.inputs`, whose ``make_input`` gives the input of a data set by
   name.
"""
