"""medbench: benchmark imbalance remedies for medical image classifiers.

The import name is ``medbench``; the source lives in ``benchmark/`` (the engine) and
``plugins/`` (the built-in plugins, importable as ``medbench.plugins``).
"""

__version__ = "0.1.0"
