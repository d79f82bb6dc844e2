"""Subspace fine-tuning: train a Hugging Face encoder or decoder inside a basis (Zhang et al.
2023), for sequence classification, regression or causal language modelling.

config.py       SubspaceConfig (h, theta lr, init, trainable parts, V dtype, scope)
projection.py   dense V theta (float32, or float16 V with float32 products); random bases
fastfood.py     the Fastfood projection H G Pi H B with a torch fast Walsh-Hadamard transform
sources.py      BasisSource: a local basis store, the registry (client adapter), random
reparam.py      SubspaceModel: theta0 + V theta per layer via functional_call; merge; save
methods.py      full, freeze, intrinsic, transfer, unified, zeroshot, global, random, fastfood
data.py         tasks from PyPI-packaged data (Rotten Tomatoes, IMDB, TREC-6, SMS spam, VADER),
                user files; causal-LM texts and prompt/response pairs
causal.py       causal-LM batches (prompts masked), loss and perplexity, generation
models.py       MiniLM from its package, local folders, Hub IDs (HF cache), tiny random models
train.py        the training loop (two learning rates), evaluation, weights held at zero
metrics.py      accuracy, Matthews correlation, Pearson
outliers.py     outlier dimensions of V theta (Table 4, Figure 4) and disabling masks (Table 3)
runner.py       one run from a RunSpec: what `tinysub finetune` calls
"""
