"""Data shipped inside the servecmp distribution (package data, found with importlib.resources).

mmlu_sample/  a 228-item MMLU sample (MIT, see its README.txt and LICENSE), servecmp's default
              MMLU source when no --data-dir is given.
gsm8k_sample/ the first 100 GSM8K test rows and 5 train exemplars (MIT, see its README.txt and
              LICENSE), servecmp gen's default GSM8K source when no --data-dir is given.
"""
