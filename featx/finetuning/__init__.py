"""Fine-tuning: promote a frozen-feature setup to end-to-end training (``run``: ``featx.finetune``;
``estimator``: ``FineTunedClassifier``; ``strategies``; ``training``)."""
