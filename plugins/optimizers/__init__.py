"""Built-in hyper-parameter optimizers: ``sma`` (mealpy), ``random`` and ``optuna``."""
