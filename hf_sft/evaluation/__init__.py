"""Generation-based evaluation during training: generate, grade, summarise, write results/; in the training process
(callback) or beside it (async_callback and its worker)."""
