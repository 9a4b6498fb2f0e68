"""Fine-tuning tasks.

readers (files -> examples), datasets (the built-in tasks), features
(examples -> model inputs), qa (SQuAD windows and span decoding), metrics,
and finetune (finetune / evaluate / predict: the glue to the training engine).
"""
