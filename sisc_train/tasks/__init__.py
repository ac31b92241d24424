"""The tasks: what each job trains (its data, model, step and evaluation); the loop does the rest."""
