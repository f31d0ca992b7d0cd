"""The parts of ``benchmarks/device_check.py``, one module each (see that script's docstring).

``base`` holds what they share (the Recorder, helpers); ``env``, ``kernels``, ``correctness``,
``timing`` (parts timing and job), ``memory`` and ``distributed`` each export ``part_<name>``.
Imports point one way: ``benchmarks.common`` and the benchmark scripts below, these modules
above them, ``device_check.py`` on top.
"""
