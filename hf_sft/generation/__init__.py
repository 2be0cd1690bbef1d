"""Prompts plus sampling settings in, texts out: the backend protocol (base), Hugging Face generate (hf) and vLLM
(vllm). Knows models, not grading."""
