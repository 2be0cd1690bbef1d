"""Strings in, rewards out: the graders, the safe parsers of untrusted text, and the process pool that grades with a
deadline. The ground floor: imports neither torch nor transformers."""
