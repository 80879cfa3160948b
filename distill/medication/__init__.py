"""The medication domain of the distill stage: prompts, the LEADER teacher, the student, their
losses and training, k-fold evaluation with the baselines, and the run that ties them together."""
