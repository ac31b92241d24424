"""Command-line entry points of SISC (`accelerate launch train/<script>.py ...`, `python -m train.<script>`).

Each script only calls the `main` of the `sisc_train` module that implements it: the training code itself is the
`sisc_train` package (installed with `pip install -e .`).
"""
