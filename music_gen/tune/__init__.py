"""Ray Tune sweeps over the training driver: ``space`` (the search space in dotted config
keys, checked before Ray starts) and ``sweep`` (trials, ASHA, MLflow parent and child
runs, the table of trials and the best model)."""
