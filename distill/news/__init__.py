"""The news domain of the distill stage: impressions as model input (`samples`), the word-piece
vocabulary (`pieces`), the NRMS-style teacher over a language model (`teacher`, its training in
`teacher_train`, its cached vectors in `vectors`), the student and its distillation (`student`,
`train`), scoring (`evaluate`), what a run keeps for its export (`export_inputs`) and the run
that ties them together (`run`)."""
