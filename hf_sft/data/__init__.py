"""From a data source to the trainer's inputs: load and check records, format prompts, tokenise with a response mask;
the builtin demo assets."""
