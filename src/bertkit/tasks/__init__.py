"""Fine-tuning tasks.

readers (files -> examples), datasets (the built-in tasks and their recipes), kinds
(classification, regression, token, qa: each one's head, features, predictions, scores),
features and qa (examples -> model inputs), metrics, settings (FinetuneConfig), predictor
(load once, predict many) and finetune (finetune / evaluate / predict: the glue to the engine).
"""
