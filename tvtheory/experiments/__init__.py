"""Vision finetuning experiments (E1-E3 of docs/theory.md) on the small ViT, built on the tvtheory library.

Modules: ``dist`` (torch.distributed context and data sharding), ``probe`` (the frozen linear-probe head),
``finetune`` (the per-epoch recording loop, resumable), ``analysis`` (E1/E2 statistics, T2/T3 expansion
terms by Hessian-vector products), ``merging`` (E3 task arithmetic), ``vision`` (the command line).
"""
