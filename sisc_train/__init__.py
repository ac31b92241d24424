"""The training side of SISC: everything the scripts under `train/` run.

Sub-packages, each importing only from those listed after it (and from the model files at the repository root):

    tasks       what each job trains: pretraining / retrieval fine-tuning, VQA, NLVR, text assignment, teacher cache
    evaluation  retrieval (ITC, ITM re-ranking), VQA and NLVR evaluation, their metrics and command lines
    loop        the one Accelerate training loop, its arguments, checkpoints, stopping, launch checks
    publishing  model cards and the Hub upload
    data        image decoding, image-caption pairs, task data, teacher cache, skip counting, vocabulary checks
    synthetic   the embedded generated datasets (shapes captions, VQA and NLVR task data)

`tests/test_package_layout.py` checks this order and that the import graph has no cycles.
"""
