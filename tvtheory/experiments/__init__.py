"""Vision finetuning experiments (E1-E3 of docs/theory.md) on the small ViT, built on the tvtheory library.

The pipeline as a library (docs/vision.md, "From a script"), one job per module:
``config`` (``VisionConfig``: every setting, validated once), ``encoders`` (the pretrained encoder, loaded once
by the caller), ``tasks`` (a task's capped splits), ``heads`` (the frozen probe head and the curvature at
theta_0), ``runs`` (the finetuning runs and their result files), ``merging`` (E3 task arithmetic),
``report`` (what the command line prints), ``storage`` (the artifact files, written atomically),
``errors`` (``VisionError``, the user errors). Underneath: ``finetune`` (the per-epoch recording loop,
resumable), ``analysis`` (E1/E2 statistics, T2/T3 expansion terms by Hessian-vector products), ``probe``
(the linear-probe head), ``step_size`` (eta = c / lambda_hat), ``dist`` (torch.distributed context and data
sharding). ``vision`` is the command line, ``python -m tvtheory.experiments.vision``.
"""
