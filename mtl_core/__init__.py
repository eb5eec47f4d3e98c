"""MTL Lab engine: configs, task suites, models, weighting, trainer, run store, jobs, CLI.

Never imports streamlit: the pages depend on this package, not the other way round.
"""

__version__ = "0.1.0"
