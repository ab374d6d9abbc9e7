"""Data shipped inside the servecmp distribution (package data, found with importlib.resources).

mmlu_sample/  a 228-item MMLU sample (MIT, see its README.txt and LICENSE), servecmp's default
              MMLU source when no --data-dir is given.
"""
