"""Parts every engine uses, once: audio loading and prompt checks, text normalisation and splitting, voice presets on
disk, the llama.cpp wrapper, CPU placement, bundle files and hashes, atomic writes, user-facing errors, prompt
transcription (ASR)."""
